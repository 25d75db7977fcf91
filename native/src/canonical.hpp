// The canonical JSON of a sealed document (docs/package-format.md, "Integrity"): keys sorted at every level,
// no whitespace, non-ASCII escaped as \uXXXX, numbers as Python writes them. Its sha256 is the seal.
#pragma once

#include <string>
#include <string_view>

#include "json.hpp"

namespace edgetune {

// ``value``'s canonical form; at the top level, the member ``skip`` (the seal itself) is left out. A number
// that has no canonical form (an infinity) is a JsonError.
std::string canonical_json(const Json& value, std::string_view skip = {});

// A double as Python's repr writes it (shortest digits that read back the same; positional for decimal
// exponents -4..15, else d.ddde+XX).
std::string python_float_repr(double value);

}  // namespace edgetune
