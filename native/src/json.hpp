// A small JSON reader: enough for a tokenizer.json or a manifest (objects, arrays, strings with every escape,
// numbers, literals). Values form a tree; object members keep their order. Errors throw JsonError with the
// byte offset, so a corrupt file is named, not crashed on.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgetune {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_array() const { return kind_ == Kind::Array; }
  // A number written without a fraction or exponent (JSON's integers: Python reads them as int, not float).
  bool is_integer_literal() const { return kind_ == Kind::Number && !literal_.empty(); }
  // Such a number's digits as written.
  const std::string& literal() const { return literal_; }

  // Typed accessors: a value of another kind is a JsonError naming ``what``.
  const std::string& str(const char* what) const;
  double number(const char* what) const;
  int64_t integer(const char* what) const;
  bool boolean(const char* what) const;
  const std::vector<Json>& items(const char* what) const;
  const std::vector<std::pair<std::string, Json>>& members(const char* what) const;

  // The member ``key`` of an object, or nullptr when absent (or when this is not an object).
  const Json* find(std::string_view key) const;
  // The member ``key``; absent is a JsonError.
  const Json& at(std::string_view key) const;

  // ``max_depth``: the most levels of nested arrays/objects accepted (deeper is a JsonError).
  static Json parse(std::string_view text, int max_depth = 256);

 private:
  friend class JsonParser;
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::string literal_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

}  // namespace edgetune
