#include "dataset.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "canonical.hpp"
#include "json.hpp"

namespace edgetune {

namespace {

[[noreturn]] void refuse(const std::string& path, int64_t row, const std::string& why) {
  throw DataError(path + ": row " + std::to_string(row) + ": " + why);
}

// Python's str.isspace() for the code point starting at s[i] (its UTF-8 length in ``len``).
bool python_space_at(const std::string& s, size_t i, size_t& len) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  len = 1;
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return true;
  if (c < 0x80) return false;
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
    cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F), len = 2;
  } else if ((c & 0xF0) == 0xE0 && i + 2 < s.size()) {
    cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F), len = 3;
  } else {
    return false;
  }
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string python_strip(const std::string& s) {
  size_t begin = 0, len = 0;
  while (begin < s.size() && python_space_at(s, begin, len)) begin += len;
  size_t end = s.size();
  while (end > begin) {  // step back one code point at a time
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (!python_space_at(s, start, len) || start + len != end) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

std::string python_repr(const std::string& s) {
  // repr of a str as Python writes it in edgetune's messages: quotes, with \\ \' \n \r \t escaped
  bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    if (c == quote || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out + quote;
}

// Lines as io.StringIO(newline="") yields them: ended by \n, \r\n or \r, each with its ending.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n' || text[i] == '\r') {
      size_t end = (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ? i + 2 : i + 1;
      lines.push_back(text.substr(start, end - start));
      start = end;
      i = end - 1;
    }
  }
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

// Python's csv.reader (excel dialect, strict off): one record per call, as its state machine parses it.
class CsvReader {
 public:
  CsvReader(const std::string& path, const std::string& text) : path_(path), lines_(split_lines(text)) {}
  int64_t line_num() const { return line_num_; }

  // The next record (possibly empty: a blank line); false at the end.
  bool next(std::vector<std::string>& fields) {
    fields.clear();
    field_.clear();
    state_ = State::StartRecord;
    bool pending = false;
    while (true) {
      if (next_line_ >= lines_.size()) {
        if (!field_.empty() || state_ == State::InQuoted) {  // non-strict: the last field ends with the data
          fields.push_back(field_);
          return true;
        }
        return pending;
      }
      const std::string& line = lines_[next_line_++];
      ++line_num_;
      pending = true;
      for (char c : line) process(c, fields, false);
      process('\0', fields, true);
      if (state_ == State::StartRecord) return true;
    }
  }

 private:
  enum class State { StartRecord, StartField, InField, InQuoted, QuoteInQuoted, EatCrnl };
  std::string path_;
  std::vector<std::string> lines_;
  size_t next_line_ = 0;
  int64_t line_num_ = 0;
  State state_ = State::StartRecord;
  std::string field_;

  void save(std::vector<std::string>& fields) {
    fields.push_back(field_);
    field_.clear();
  }

  void process(char c, std::vector<std::string>& fields, bool eol) {
    bool newline = !eol && (c == '\n' || c == '\r');
    switch (state_) {
      case State::StartRecord:
        if (eol) return;  // an empty line: an empty record
        if (newline) {
          state_ = State::EatCrnl;
          return;
        }
        state_ = State::StartField;
        [[fallthrough]];
      case State::StartField:
        if (newline || eol) {
          save(fields);
          state_ = eol ? State::StartRecord : State::EatCrnl;
        } else if (c == '"') {
          state_ = State::InQuoted;
        } else if (c == ',') {
          save(fields);
        } else {
          field_ += c;
          state_ = State::InField;
        }
        return;
      case State::InField:
        if (newline || eol) {
          save(fields);
          state_ = eol ? State::StartRecord : State::EatCrnl;
        } else if (c == ',') {
          save(fields);
          state_ = State::StartField;
        } else {
          field_ += c;
        }
        return;
      case State::InQuoted:
        if (eol) return;
        if (c == '"') state_ = State::QuoteInQuoted;
        else field_ += c;
        return;
      case State::QuoteInQuoted:
        if (!eol && c == '"') {
          field_ += c;
          state_ = State::InQuoted;
        } else if (!eol && c == ',') {
          save(fields);
          state_ = State::StartField;
        } else if (newline || eol) {
          save(fields);
          state_ = eol ? State::StartRecord : State::EatCrnl;
        } else {
          field_ += c;
          state_ = State::InField;
        }
        return;
      case State::EatCrnl:
        if (newline) return;
        if (eol) {
          state_ = State::StartRecord;
          return;
        }
        refuse(path_, line_num_, "malformed CSV (new-line character seen in unquoted field - do you need to open the "
                                 "file with newline=''?)");
    }
  }
};

using Record = std::vector<std::pair<std::string, std::string>>;  // column -> value, in the header's order

const std::string* lookup(const Record& record, const std::string& key) {
  for (const auto& [name, value] : record)
    if (name == key) return &value;
  return nullptr;
}

std::vector<std::pair<int64_t, Record>> read_csv(const std::string& path, const std::string& text) {
  CsvReader reader(path, text);
  std::vector<std::string> header;
  if (!reader.next(header)) refuse(path, 1, "malformed CSV header");
  std::set<std::string> seen;
  for (std::string& name : header) {
    name = python_strip(name);
    if (!seen.insert(name).second)
      refuse(path, 1, "column " + python_repr(name) + " appears more than once in the header; rename one");
  }
  std::vector<std::pair<int64_t, Record>> records;
  std::vector<std::string> values;
  while (reader.next(values)) {
    int64_t row = reader.line_num();
    bool blank = std::all_of(values.begin(), values.end(), [](const std::string& v) { return python_strip(v).empty(); });
    if (values.empty() || blank) continue;
    if (values.size() != header.size())
      refuse(path, row, "expected " + std::to_string(header.size()) + " fields, found " + std::to_string(values.size()));
    Record record;
    for (size_t i = 0; i < header.size(); ++i) record.emplace_back(header[i], values[i]);
    records.emplace_back(row, std::move(record));
  }
  return records;
}

// A JSON value as Python's str() writes it (labels may be numbers or booleans in JSON Lines).
bool python_str(const Json& value, std::string& out) {
  switch (value.kind()) {
    case Json::Kind::String: out = value.str("label"); return true;
    case Json::Kind::Bool: out = value.boolean("label") ? "True" : "False"; return true;
    case Json::Kind::Number:
      out = value.is_integer_literal() ? (value.literal() == "-0" ? "0" : value.literal())
                                       : python_float_repr(value.number("label"));
      return true;
    default: return false;
  }
}

}  // namespace

Dataset read_dataset(const std::string& path, const std::string& text_column, const std::string& label_column) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) throw DataError(path + ": file not found");
  if (S_ISDIR(info.st_mode)) throw DataError(path + ": is a directory, expected a .csv or .jsonl file");
  size_t dot = path.find_last_of('.');
  size_t slash = path.find_last_of('/');
  std::string suffix = (dot == std::string::npos || (slash != std::string::npos && dot < slash)) ? "" : path.substr(dot);
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::tolower(c); });
  if (suffix != ".csv" && suffix != ".jsonl" && suffix != ".json")
    throw DataError(path + ": unsupported file type '" + suffix + "'; use one of .csv, .jsonl, .json");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  // UTF-8, or the row of the first bad byte
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t extra = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 && c >= 0xC2 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 3 : 9;
    bool ok = extra != 9 && i + extra < text.size() + (extra == 0);
    for (size_t k = 1; ok && k <= extra; ++k) ok = i + k < text.size() && (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    if (ok && extra == 2) {  // no overlong forms, no surrogates
      unsigned char c1 = static_cast<unsigned char>(text[i + 1]);
      ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
    } else if (ok && extra == 3) {
      unsigned char c1 = static_cast<unsigned char>(text[i + 1]);
      ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (!ok) {
      int64_t row = 1 + std::count(text.begin(), text.begin() + i, '\n');
      char byte[8];
      std::snprintf(byte, sizeof byte, "0x%02x", c);
      refuse(path, row, std::string("not valid UTF-8 (byte ") + byte + " at offset " + std::to_string(i) +
                            "); re-save the file as UTF-8");
    }
    i += extra + 1;
  }
  if (python_strip(text).empty()) throw DataError(path + ": file is empty");

  Dataset data;
  auto add = [&](int64_t row, const std::string* text_value, bool text_is_string, const std::string* label_value,
                 bool label_present, bool label_null) {
    (void)label_present;
    if (!text_is_string || python_strip(*text_value).empty())
      refuse(path, row, "empty text in column " + python_repr(text_column));
    std::string label;
    if (!label_column.empty()) {
      if (label_null || python_strip(*label_value).empty())
        refuse(path, row, "empty label in column " + python_repr(label_column));
      label = python_strip(*label_value);
    }
    data.texts.push_back(*text_value);
    data.labels.push_back(label);
    data.rows.push_back(row);
  };
  auto missing_columns = [&](int64_t row, bool has_text, bool has_label, const std::vector<std::string>& found) {
    std::vector<std::pair<std::string, std::string>> missing;
    if (!has_text) missing.emplace_back(text_column, "--text-column");
    if (!label_column.empty() && !has_label) missing.emplace_back(label_column, "--label-column");
    if (missing.empty()) return;
    std::string names, flags, columns;
    for (size_t i = 0; i < missing.size(); ++i) {
      names += (i ? " and " : "") + python_repr(missing[i].first);
      flags += (i ? " and " : "") + missing[i].second;
    }
    for (size_t i = 0; i < found.size(); ++i) columns += (i ? ", " : "") + python_repr(found[i]);
    bool plural = missing.size() > 1;
    refuse(path, row, std::string("missing column") + (plural ? "s " : " ") + names + " (columns found: " +
                          (columns.empty() ? "none" : columns) + "); name yours with " + flags + ", or add " +
                          (plural ? "them" : "it"));
  };

  if (suffix == ".csv") {
    auto records = read_csv(path, text);
    if (records.empty()) throw DataError(path + ": file has a header but no rows");
    for (const auto& [row, record] : records) {
      const std::string* t = lookup(record, text_column);
      const std::string* l = label_column.empty() ? nullptr : lookup(record, label_column);
      std::vector<std::string> found;
      for (const auto& column : record) found.push_back(column.first);
      missing_columns(row, t != nullptr, l != nullptr, found);
      add(row, t, true, l, true, false);
    }
    return data;
  }
  // JSON Lines: records end at "\n" only
  int64_t row = 0;
  size_t start = 0;
  bool any = false;
  std::vector<std::string> keep_texts, keep_labels;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++row;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (python_strip(line).empty()) {
      if (end == text.size()) break;
      continue;
    }
    Json record;
    try {
      record = Json::parse(line);
    } catch (const JsonError& err) {
      refuse(path, row, std::string("invalid JSON (") + err.what() + ")");
    }
    if (!record.is_object()) refuse(path, row, "expected a JSON object per line");
    any = true;
    const Json* t = record.find(text_column);
    const Json* l = label_column.empty() ? nullptr : record.find(label_column);
    std::vector<std::string> found;
    for (const auto& m : record.members("record")) found.push_back(m.first);
    missing_columns(row, t != nullptr, l != nullptr, found);
    std::string label;
    bool label_null = l != nullptr && l->is_null();
    if (l != nullptr && !label_null && !python_str(*l, label))
      refuse(path, row, "label in column " + python_repr(label_column) + " is not a string or a number");
    keep_texts.push_back(t->is_string() ? t->str("text") : std::string());
    keep_labels.push_back(label);
    add(row, &keep_texts.back(), t->is_string(), &keep_labels.back(), true, label_null);
    if (end == text.size()) break;
  }
  if (!any) throw DataError(path + ": file has a header but no rows");
  return data;
}

std::vector<int64_t> encode_labels(const Dataset& data, const std::vector<std::string>& known,
                                   const std::string& source) {
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < known.size(); ++i) index.emplace(known[i], static_cast<int64_t>(i));
  std::vector<int64_t> out;
  for (size_t i = 0; i < data.labels.size(); ++i) {
    auto it = index.find(data.labels[i]);
    if (it == index.end()) {
      std::string names;
      for (size_t k = 0; k < known.size(); ++k) names += (k ? ", " : "") + known[k];
      refuse(source, data.rows[i], "label " + python_repr(data.labels[i]) + " was not seen in training (known labels: " +
                                       names + ")");
    }
    out.push_back(it->second);
  }
  return out;
}

}  // namespace edgetune
