#include "canonical.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

namespace edgetune {

namespace {

void append_escaped(std::string& out, const std::string& s) {
  out += '"';
  size_t i = 0;
  auto hex4 = [&](uint32_t unit) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04x", unit);
    out += buf;
  };
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20 || c == 0x7F) hex4(c);  // Python escapes DEL too: only ' '..'~' stay as they are
          else out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // the parser produced valid UTF-8: decode one code point
    size_t extra = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
    uint32_t cp = c & (extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07);
    for (size_t k = 1; k <= extra && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += extra + 1;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      hex4(0xD800 + (cp >> 10));
      hex4(0xDC00 + (cp & 0x3FF));
    } else {
      hex4(cp);
    }
  }
  out += '"';
}

void write(std::string& out, const Json& value, std::string_view skip, bool top) {
  switch (value.kind()) {
    case Json::Kind::Null: out += "null"; return;
    case Json::Kind::Bool: out += value.boolean("value") ? "true" : "false"; return;
    case Json::Kind::String: append_escaped(out, value.str("value")); return;
    case Json::Kind::Number:
      if (value.is_integer_literal()) {
        const std::string& digits = value.literal();
        out += (digits == "-0") ? "0" : digits;
      } else {
        out += python_float_repr(value.number("value"));
      }
      return;
    case Json::Kind::Array: {
      out += '[';
      bool first = true;
      for (const Json& item : value.items("value")) {
        if (!first) out += ',';
        first = false;
        write(out, item, {}, false);
      }
      out += ']';
      return;
    }
    case Json::Kind::Object: {
      std::vector<const std::pair<std::string, Json>*> members;
      for (const auto& m : value.members("value"))
        if (!(top && m.first == skip)) members.push_back(&m);
      // byte order of UTF-8 is code point order: Python's sort of the keys; a repeated key keeps the last
      std::stable_sort(members.begin(), members.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      bool first = true;
      for (size_t i = 0; i < members.size(); ++i) {
        if (i + 1 < members.size() && members[i + 1]->first == members[i]->first) continue;
        if (!first) out += ',';
        first = false;
        append_escaped(out, members[i]->first);
        out += ':';
        write(out, members[i]->second, {}, false);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace

std::string python_float_repr(double value) {
  if (!std::isfinite(value)) throw JsonError("a number that is not finite has no canonical form");
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);  // shortest round-trip digits: [-]d[.ddd]e[+-]XX
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exponent = std::stoi(sci.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      std::string whole = digits.substr(0, std::min<size_t>(digits.size(), exponent + 1));
      whole.append(exponent + 1 > static_cast<int>(digits.size()) ? exponent + 1 - digits.size() : 0, '0');
      std::string fraction = static_cast<int>(digits.size()) > exponent + 1 ? digits.substr(exponent + 1) : "0";
      out += whole + "." + fraction;
    } else {
      out += "0." + std::string(-exponent - 1, '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  }
  return out;
}

std::string canonical_json(const Json& value, std::string_view skip) {
  std::string out;
  write(out, value, skip, true);
  return out;
}

}  // namespace edgetune
