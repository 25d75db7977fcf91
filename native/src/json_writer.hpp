// JSON text written in order, for the personal state and the job's work records (the state's seal is computed
// over its canonical form, so only the values matter, not the layout).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace edgetune {

class JsonWriter {
 public:
  JsonWriter& key(const std::string& k) {
    comma();
    string(k);
    text_ += ":";
    fresh_ = true;
    return *this;
  }
  JsonWriter& open(char bracket) {
    comma();
    text_ += bracket;
    fresh_ = true;
    return *this;
  }
  JsonWriter& close(char bracket) {
    text_ += bracket;
    fresh_ = false;
    return *this;
  }
  JsonWriter& value(const std::string& s) { return comma(), string(s), done(); }
  JsonWriter& value(const char* s) { return value(std::string(s)); }
  JsonWriter& value(int64_t n) { return comma(), text_ += std::to_string(n), done(); }
  JsonWriter& value(int n) { return value(static_cast<int64_t>(n)); }
  JsonWriter& value(bool b) { return comma(), text_ += b ? "true" : "false", done(); }
  JsonWriter& number(double x) {  // NaN and infinities are not JSON: null
    comma();
    if (!std::isfinite(x)) {
      text_ += "null";
    } else {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", x);
      text_ += buf;
      if (std::string(buf).find_first_of(".eEn") == std::string::npos) text_ += ".0";  // stays a float
    }
    return done();
  }
  JsonWriter& null() { return comma(), text_ += "null", done(); }
  JsonWriter& raw(const std::string& json) { return comma(), text_ += json, done(); }
  const std::string& text() const { return text_; }

 private:
  void comma() {
    if (!fresh_ && !text_.empty()) text_ += ",";
    fresh_ = false;
  }
  JsonWriter& done() {
    fresh_ = false;
    return *this;
  }
  void string(const std::string& s) {
    text_ += '"';
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        text_ += '\\';
        text_ += static_cast<char>(c);
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        text_ += buf;
      } else {
        text_ += static_cast<char>(c);
      }
    }
    text_ += '"';
  }
  std::string text_;
  bool fresh_ = true;
};

}  // namespace edgetune
