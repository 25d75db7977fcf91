// The WordPiece tokenizer of the BERT-style families (BERT, DistilBERT, ELECTRA, MPNet): a package's
// tokenizer.json read and applied as the `tokenizers` library applies it (added tokens, BertNormalizer,
// BertPreTokenizer, WordPiece, the post-processor's special tokens) with the package's truncation
// (docs/package-format.md, "Tokenization"). Anything else in a tokenizer.json is refused as unsupported.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace edgetune {

// A tokenizer.json the library cannot read (``unsupported``: valid, but a tokenizer it does not implement).
struct TokenizerError : std::runtime_error {
  TokenizerError(const std::string& message, bool unsupported_kind = false)
      : std::runtime_error(message), unsupported(unsupported_kind) {}
  bool unsupported;
};

// Text the tokenizer cannot take (not UTF-8) or a length it cannot honour.
struct EncodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class WordPieceTokenizer {
 public:
  // Reads ``tokenizer.json`` (its bytes): throws TokenizerError.
  static std::unique_ptr<WordPieceTokenizer> from_json(std::string_view text);

  // The ids of ``utf8`` with special tokens, its own tokens cut from the end so that at most ``max_length``
  // ids remain (0: no truncation). Throws EncodeError.
  std::vector<int64_t> encode(std::string_view utf8, size_t max_length) const;

  size_t special_count() const { return prefix_.size() + suffix_.size(); }

 private:
  struct AddedToken {
    std::u32string content;
    int64_t id;
    bool normalized, lstrip, rstrip;
  };

  bool clean_text_ = false, chinese_chars_ = false, strip_accents_ = false, lowercase_ = false;
  bool has_normalizer_ = false;
  std::unordered_map<std::string, int64_t> vocab_;
  std::string continuing_prefix_ = "##";
  int64_t unk_id_ = -1;
  size_t max_input_chars_ = 100;
  std::vector<AddedToken> added_;
  std::vector<int64_t> prefix_, suffix_;

  void split_added(const std::u32string& text, bool normalized_pass, std::vector<int64_t>& ids) const;
  void normalized_piece(const std::u32string& raw, std::vector<int64_t>& ids) const;
  std::u32string normalize(const std::u32string& raw) const;
  void word_pieces(const std::u32string& word, std::vector<int64_t>& ids) const;
};

}  // namespace edgetune
