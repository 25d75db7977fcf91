#include "wordpiece.hpp"

#include <algorithm>
#include <cstddef>

#include "json.hpp"
#include "utf8.hpp"

namespace edgetune {

namespace {

struct CodeRange {
  uint32_t lo, hi;
};
struct CodeMapping {
  uint32_t cp, offset, length;
};

#include "unicode_tables.inc"

bool in_ranges(const CodeRange* ranges, size_t size, uint32_t cp) {
  const CodeRange* end = ranges + size;
  const CodeRange* it = std::upper_bound(ranges, end, cp, [](uint32_t c, const CodeRange& r) { return c < r.lo; });
  return it != ranges && cp <= (it - 1)->hi;
}

// The replacement of ``cp`` in a mapping table, or nullptr when it maps to itself.
const CodeMapping* mapped(const CodeMapping* table, size_t size, uint32_t cp) {
  const CodeMapping* end = table + size;
  const CodeMapping* it = std::lower_bound(table, end, cp, [](const CodeMapping& m, uint32_t c) { return m.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

void append_mapped(std::u32string& out, uint32_t cp, const CodeMapping* table, const uint32_t* data, size_t size) {
  if (const CodeMapping* m = mapped(table, size, cp)) {
    out.append(reinterpret_cast<const char32_t*>(data + m->offset), m->length);
  } else {
    out += static_cast<char32_t>(cp);
  }
}

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t extra;
    if (c < 0x80) {
      cp = c, extra = 0;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, extra = 1;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, extra = 2;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07, extra = 3;
    } else {
      throw EncodeError("text is not UTF-8 (byte " + std::to_string(i) + ")");
    }
    for (size_t k = 1; k <= extra; ++k) {
      if (i + k >= s.size()) throw EncodeError("text is not UTF-8 (truncated sequence at byte " + std::to_string(i) + ")");
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) throw EncodeError("text is not UTF-8 (byte " + std::to_string(i + k) + ")");
      cp = (cp << 6) | (cc & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      throw EncodeError("text is not UTF-8 (invalid code point at byte " + std::to_string(i) + ")");
    out += static_cast<char32_t>(cp);
    i += extra + 1;
  }
  return out;
}

std::string encode_utf8(const char32_t* s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) append_utf8(out, s[i]);
  return out;
}

bool is_split_space(uint32_t cp) { return in_ranges(kSplitSpace, kSplitSpaceSize, cp); }

bool flag(const Json& object, const char* key, bool fallback) {
  const Json* value = object.find(key);
  return (value == nullptr || value->is_null()) ? fallback : value->boolean(key);
}

std::string type_of(const Json& object, const char* what) {
  if (!object.is_object()) throw TokenizerError(std::string(what) + " is not an object");
  return object.at("type").str("type");
}

// The special-token ids a post-processor puts before and after a single text.
void read_post_processor(const Json& post, const std::unordered_map<std::string, int64_t>& vocab,
                         std::vector<int64_t>& prefix, std::vector<int64_t>& suffix) {
  if (post.is_null()) return;
  std::string type = type_of(post, "post_processor");
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    prefix.push_back(post.at("cls").items("cls").at(1).integer("cls id"));
    suffix.push_back(post.at("sep").items("sep").at(1).integer("sep id"));
    return;
  }
  if (type != "TemplateProcessing")
    throw TokenizerError("post_processor " + type + " is not supported (TemplateProcessing, BertProcessing and "
                         "RobertaProcessing are)", true);
  const Json& specials = post.at("special_tokens");
  bool seen_sequence = false;
  for (const Json& piece : post.at("single").items("single")) {
    if (const Json* seq = piece.find("Sequence")) {
      if (seen_sequence || seq->at("id").str("id") != "A")
        throw TokenizerError("post_processor: a single-text template must hold sequence A once", true);
      seen_sequence = true;
    } else if (const Json* special = piece.find("SpecialToken")) {
      const Json& token = specials.at(special->at("id").str("id"));
      for (const Json& id : token.at("ids").items("ids")) (seen_sequence ? suffix : prefix).push_back(id.integer("id"));
    } else {
      throw TokenizerError("post_processor: unknown template piece", true);
    }
  }
  (void)vocab;
}

}  // namespace

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_json(std::string_view text) {
  auto tok = std::unique_ptr<WordPieceTokenizer>(new WordPieceTokenizer());
  try {
    Json doc = Json::parse(text);
    if (!doc.is_object()) throw TokenizerError("tokenizer.json is not a JSON object");
    const Json& model = doc.at("model");
    if (type_of(model, "model") != "WordPiece")
      throw TokenizerError("model " + model.at("type").str("type") + " is not supported (WordPiece is)", true);
    for (const auto& [piece, id] : model.at("vocab").members("vocab")) tok->vocab_.emplace(piece, id.integer("vocab id"));
    const std::string& unk = model.at("unk_token").str("unk_token");
    auto unk_it = tok->vocab_.find(unk);
    if (unk_it == tok->vocab_.end()) throw TokenizerError("unk_token " + unk + " is not in the vocabulary");
    tok->unk_id_ = unk_it->second;
    if (const Json* p = model.find("continuing_subword_prefix"); p && !p->is_null()) tok->continuing_prefix_ = p->str("prefix");
    if (const Json* m = model.find("max_input_chars_per_word"); m && !m->is_null())
      tok->max_input_chars_ = static_cast<size_t>(m->integer("max_input_chars_per_word"));

    const Json& normalizer = doc.at("normalizer");
    if (!normalizer.is_null()) {
      if (type_of(normalizer, "normalizer") != "BertNormalizer")
        throw TokenizerError("normalizer " + normalizer.at("type").str("type") + " is not supported (BertNormalizer is)",
                             true);
      tok->has_normalizer_ = true;
      tok->clean_text_ = flag(normalizer, "clean_text", true);
      tok->chinese_chars_ = flag(normalizer, "handle_chinese_chars", true);
      tok->lowercase_ = flag(normalizer, "lowercase", true);
      tok->strip_accents_ = flag(normalizer, "strip_accents", tok->lowercase_);  // null: follows lowercase
    }
    const Json& pre = doc.at("pre_tokenizer");
    if (pre.is_null() || type_of(pre, "pre_tokenizer") != "BertPreTokenizer")
      throw TokenizerError("pre_tokenizer: only BertPreTokenizer is supported", true);
    read_post_processor(doc.at("post_processor"), tok->vocab_, tok->prefix_, tok->suffix_);
    if (const Json* added = doc.find("added_tokens"); added && !added->is_null()) {
      for (const Json& a : added->items("added_tokens")) {
        if (flag(a, "single_word", false))
          throw TokenizerError("added token " + a.at("content").str("content") + ": single_word is not supported",
                               true);
        const std::string& content = a.at("content").str("content");
        if (content.empty()) continue;
        tok->added_.push_back({decode_utf8(content), a.at("id").integer("id"), flag(a, "normalized", true),
                               flag(a, "lstrip", false), flag(a, "rstrip", false)});
      }
    }
    // The file's own truncation and padding settings are not used: the caller's max_length decides, as the
    // spec's procedure (enable_truncation(max_length), no_padding()) does.
  } catch (const JsonError& err) {
    throw TokenizerError(std::string("tokenizer.json: ") + err.what());
  } catch (const EncodeError& err) {
    throw TokenizerError(std::string("tokenizer.json: ") + err.what());
  } catch (const std::out_of_range&) {
    throw TokenizerError("tokenizer.json: a post-processor token has no id");
  }
  return tok;
}

std::u32string WordPieceTokenizer::normalize(const std::u32string& raw) const {
  if (!has_normalizer_) return raw;
  std::u32string out;
  out.reserve(raw.size());
  std::u32string step;
  for (char32_t c : raw) {
    uint32_t cp = c;
    step.clear();
    if (clean_text_) {
      if (in_ranges(kCleanRemoved, kCleanRemovedSize, cp)) continue;
      if (in_ranges(kCleanSpaced, kCleanSpacedSize, cp)) cp = ' ';
    }
    if (chinese_chars_ && in_ranges(kChinese, kChineseSize, cp)) {
      step += U' ';
      step += static_cast<char32_t>(cp);
      step += U' ';
    } else {
      step += static_cast<char32_t>(cp);
    }
    if (strip_accents_) {
      std::u32string stripped;
      for (char32_t s : step) {
        if (s >= kHangulFirst && s <= kHangulLast) {  // Unicode's arithmetic decomposition of a syllable
          uint32_t index = s - kHangulFirst;
          stripped += static_cast<char32_t>(0x1100 + index / 588);
          stripped += static_cast<char32_t>(0x1161 + (index % 588) / 28);
          if (index % 28) stripped += static_cast<char32_t>(0x11A7 + index % 28);
        } else {
          append_mapped(stripped, s, kStripAccents, kStripAccentsData, kStripAccentsSize);
        }
      }
      step.swap(stripped);
    }
    if (lowercase_) {
      for (char32_t s : step) append_mapped(out, s, kLowercase, kLowercaseData, kLowercaseSize);
    } else {
      out += step;
    }
  }
  return out;
}

void WordPieceTokenizer::word_pieces(const std::u32string& word, std::vector<int64_t>& ids) const {
  if (word.size() > max_input_chars_) {
    ids.push_back(unk_id_);
    return;
  }
  std::vector<int64_t> pieces;
  size_t start = 0;
  while (start < word.size()) {
    size_t end = word.size();
    int64_t found = -1;
    while (end > start) {  // the longest piece of the vocabulary that starts here
      std::string piece = encode_utf8(word.data() + start, end - start);
      if (start > 0) piece = continuing_prefix_ + piece;
      auto it = vocab_.find(piece);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
      --end;
    }
    if (found < 0) {  // a word with a part no piece covers is unknown as a whole
      ids.push_back(unk_id_);
      return;
    }
    pieces.push_back(found);
    start = end;
  }
  ids.insert(ids.end(), pieces.begin(), pieces.end());
}

void WordPieceTokenizer::normalized_piece(const std::u32string& raw, std::vector<int64_t>& ids) const {
  std::u32string text = normalize(raw);
  split_added(text, true, ids);
}

// Splits ``text`` on the added tokens of this pass (the raw text: tokens not normalized; the normalized text:
// the others), leftmost match first, the longest at a position; lstrip/rstrip take the whitespace beside a
// match with it. What lies between matches goes on: to the normalizer (first pass), or to the pre-tokenizer
// and WordPiece (second pass).
void WordPieceTokenizer::split_added(const std::u32string& text, bool normalized_pass,
                                     std::vector<int64_t>& ids) const {
  size_t from = 0;
  auto rest = [&](size_t begin, size_t end) {
    if (end <= begin) return;
    std::u32string part = text.substr(begin, end - begin);
    if (!normalized_pass) {
      normalized_piece(part, ids);
      return;
    }
    std::u32string word;
    auto flush = [&] {
      if (!word.empty()) word_pieces(word, ids);
      word.clear();
    };
    for (char32_t c : part) {
      if (is_split_space(c)) {
        flush();
      } else if (in_ranges(kPunctuation, kPunctuationSize, c)) {
        flush();
        word_pieces(std::u32string(1, c), ids);
      } else {
        word += c;
      }
    }
    flush();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* best = nullptr;
    for (const AddedToken& token : added_) {
      if (token.normalized != normalized_pass) continue;
      if (text.compare(pos, token.content.size(), token.content) == 0 &&
          (best == nullptr || token.content.size() > best->content.size()))
        best = &token;
    }
    if (best == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + best->content.size();
    if (best->lstrip)
      while (begin > from && is_split_space(text[begin - 1])) --begin;
    if (best->rstrip)
      while (end < text.size() && is_split_space(text[end])) ++end;
    rest(from, begin);
    ids.push_back(best->id);
    from = pos = end;
  }
  rest(from, text.size());
}

std::vector<int64_t> WordPieceTokenizer::encode(std::string_view utf8, size_t max_length) const {
  std::u32string text = decode_utf8(utf8);
  std::vector<int64_t> own;
  split_added(text, false, own);
  size_t specials = special_count();
  if (max_length > 0) {
    if (max_length < specials)
      throw EncodeError("max_length " + std::to_string(max_length) + " is below the " + std::to_string(specials) +
                        " special tokens every text gets");
    if (own.size() + specials > max_length) own.resize(max_length - specials);
  }
  std::vector<int64_t> ids(prefix_);
  ids.insert(ids.end(), own.begin(), own.end());
  ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

}  // namespace edgetune
