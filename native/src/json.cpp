#include "json.hpp"

#include <cmath>
#include <cstdlib>

#include "utf8.hpp"

namespace edgetune {

namespace {

const char* kind_name(Json::Kind kind) {
  switch (kind) {
    case Json::Kind::Null: return "null";
    case Json::Kind::Bool: return "a boolean";
    case Json::Kind::Number: return "a number";
    case Json::Kind::String: return "a string";
    case Json::Kind::Array: return "an array";
    case Json::Kind::Object: return "an object";
  }
  return "?";
}

[[noreturn]] void wrong_kind(const char* what, Json::Kind want, Json::Kind got) {
  throw JsonError(std::string(what) + ": expected " + kind_name(want) + ", found " + kind_name(got));
}

}  // namespace

class JsonParser {
 public:
  JsonParser(std::string_view text, int max_depth) : text_(text), max_depth_(max_depth) {}

  Json document() {
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters after the document");
    return value;
  }

 private:
  std::string_view text_;
  int max_depth_;  // deeper nesting is refused rather than overflowing the stack
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& why) const {
    throw JsonError("invalid JSON at byte " + std::to_string(pos_) + ": " + why);
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' ||
                                   text_[pos_] == '\t'))
      ++pos_;
  }

  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end of the document");
    return text_[pos_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  void literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) fail("unknown literal");
    pos_ += word.size();
  }

  Json parse_value(int depth) {
    if (depth >= max_depth_ && (peek() == '{' || peek() == '[')) fail("nested too deeply");
    Json value;
    char c = peek();
    if (c == '{') {
      value.kind_ = Json::Kind::Object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return value;
      }
      while (true) {
        if (peek() != '"') fail("expected a member name");
        std::string key = parse_string();
        expect(':');
        value.members_.emplace_back(std::move(key), parse_value(depth + 1));
        char next = peek();
        ++pos_;
        if (next == '}') break;
        if (next != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      value.kind_ = Json::Kind::Array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return value;
      }
      while (true) {
        value.items_.push_back(parse_value(depth + 1));
        char next = peek();
        ++pos_;
        if (next == ']') break;
        if (next != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      value.kind_ = Json::Kind::String;
      value.string_ = parse_string();
    } else if (c == 't') {
      literal("true");
      value.kind_ = Json::Kind::Bool;
      value.bool_ = true;
    } else if (c == 'f') {
      literal("false");
      value.kind_ = Json::Kind::Bool;
    } else if (c == 'n') {
      literal("null");
    } else {
      value.kind_ = Json::Kind::Number;
      size_t start = pos_;
      value.number_ = parse_number();
      std::string_view written = text_.substr(start, pos_ - start);
      if (written.find_first_of(".eE") == std::string_view::npos) value.literal_ = std::string(written);
    }
    return value;
  }

  double parse_number() {
    size_t start = pos_;
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    auto digits = [&] {
      size_t first = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ > first;
    };
    if (!digits()) fail("expected a value");
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      if (!digits()) fail("expected digits after '.'");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (!digits()) fail("expected digits in the exponent");
    }
    std::string number(text_.substr(start, pos_ - start));
    return std::strtod(number.c_str(), nullptr);
  }

  uint32_t hex4() {
    if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text_[pos_++];
      value <<= 4;
      if (h >= '0' && h <= '9') value |= h - '0';
      else if (h >= 'a' && h <= 'f') value |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') value |= h - 'A' + 10;
      else fail("bad hex digit in a \\u escape");
    }
    return value;
  }

  std::string parse_string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair encodes one code point above the BMP
            if (text_.substr(pos_, 2) != "\\u") fail("unpaired surrogate");
            pos_ += 2;
            uint32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
  }
};

Json Json::parse(std::string_view text, int max_depth) { return JsonParser(text, max_depth).document(); }

const std::string& Json::str(const char* what) const {
  if (kind_ != Kind::String) wrong_kind(what, Kind::String, kind_);
  return string_;
}

double Json::number(const char* what) const {
  if (kind_ != Kind::Number) wrong_kind(what, Kind::Number, kind_);
  return number_;
}

int64_t Json::integer(const char* what) const {
  double value = number(what);
  if (value != std::floor(value) || std::fabs(value) > 9.007199254740992e15)
    throw JsonError(std::string(what) + ": expected an integer");
  return static_cast<int64_t>(value);
}

bool Json::boolean(const char* what) const {
  if (kind_ != Kind::Bool) wrong_kind(what, Kind::Bool, kind_);
  return bool_;
}

const std::vector<Json>& Json::items(const char* what) const {
  if (kind_ != Kind::Array) wrong_kind(what, Kind::Array, kind_);
  return items_;
}

const std::vector<std::pair<std::string, Json>>& Json::members(const char* what) const {
  if (kind_ != Kind::Object) wrong_kind(what, Kind::Object, kind_);
  return members_;
}

const Json* Json::find(std::string_view key) const {
  if (kind_ != Kind::Object) return nullptr;
  const Json* found = nullptr;  // a repeated name: the last one, as Python's json module reads it
  for (const auto& [name, value] : members_)
    if (name == key) found = &value;
  return found;
}

const Json& Json::at(std::string_view key) const {
  const Json* value = find(key);
  if (value == nullptr) throw JsonError("missing member \"" + std::string(key) + "\"");
  return *value;
}

}  // namespace edgetune
