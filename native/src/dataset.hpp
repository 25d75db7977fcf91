// The user's labelled texts, read as edgetune's Python reader reads them (edgetune.data.load_dataset): a CSV
// with a header (Python's csv module, excel dialect: quotes, doubled quotes, newlines inside quotes, blank
// lines skipped) or JSON Lines, UTF-8 (a BOM is dropped); every problem is a DataError naming the file's row.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgetune {

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Dataset {
  std::vector<std::string> texts;
  std::vector<std::string> labels;  // "" when read without a label column
  std::vector<int64_t> rows;        // the file row of each example (1-based, the header is row 1)
};

// ``path`` (.csv, .jsonl or .json); ``label_column`` empty: unlabelled texts. Throws DataError.
Dataset read_dataset(const std::string& path, const std::string& text_column, const std::string& label_column);

// Each label's index in ``known`` (the package's labels); an unknown one is a DataError naming its row.
std::vector<int64_t> encode_labels(const Dataset& data, const std::vector<std::string>& known,
                                   const std::string& source);

}  // namespace edgetune
