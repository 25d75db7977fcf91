#include "safetensors.hpp"

#include <cstring>

#include "json.hpp"

namespace edgetune {

namespace {

uint64_t read_le64(const char* p) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(p[i]);
  return n;
}

// One little-endian integer of ``width`` bytes, sign-extended unless ``is_unsigned``.
int64_t read_integer(const char* p, size_t width, bool is_unsigned) {
  uint64_t n = 0;
  for (size_t i = width; i-- > 0;) n = (n << 8) | static_cast<unsigned char>(p[i]);
  if (!is_unsigned && width < 8 && (n >> (8 * width - 1)) & 1) n |= ~uint64_t(0) << (8 * width);
  return static_cast<int64_t>(n);
}

void append_le64(std::string& out, uint64_t n) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
}

}  // namespace

Tensors parse_safetensors(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 8) throw SafetensorsError(where + ": not safetensors (shorter than its header length)");
  const uint64_t header_size = read_le64(bytes.data());
  if (header_size > bytes.size() - 8 || header_size > (100u << 20))
    throw SafetensorsError(where + ": not safetensors (header length " + std::to_string(header_size) +
                           " exceeds the file)");
  const size_t base = 8 + header_size;
  const size_t data_size = bytes.size() - base;
  Tensors out;
  try {
    const Json header = Json::parse(std::string_view(bytes.data() + 8, header_size), 16);
    for (const auto& [name, entry] : header.members("safetensors header")) {
      if (name == "__metadata__") continue;
      const std::string& dtype = entry.at("dtype").str("dtype");
      Tensor t;
      for (const Json& d : entry.at("shape").items("shape")) {
        if (d.integer("shape") < 0) throw SafetensorsError(where + ": " + name + " has a negative dimension");
        t.shape.push_back(d.integer("shape"));
      }
      const auto& offsets = entry.at("data_offsets").items("data_offsets");
      if (offsets.size() != 2) throw SafetensorsError(where + ": " + name + ": data_offsets is not [begin, end]");
      const int64_t begin = offsets[0].integer("data_offsets"), end = offsets[1].integer("data_offsets");
      const size_t width = dtype == "F32" || dtype == "I32" ? 4 : dtype == "I64" ? 8 : dtype == "I16" ? 2
                           : dtype == "I8" || dtype == "U8" ? 1 : 0;
      if (width == 0)
        throw SafetensorsError(where + ": " + name + " has dtype " + dtype + " (F32 and integer indices are read)");
      const int64_t n = t.numel();
      if (begin < 0 || end < begin || static_cast<size_t>(end) > data_size || end - begin != n * int64_t(width))
        throw SafetensorsError(where + ": " + name + ": its byte range does not fit its shape or the file");
      const char* p = bytes.data() + base + begin;
      if (dtype == "F32") {
        t.values.resize(static_cast<size_t>(n));
        std::memcpy(t.values.data(), p, static_cast<size_t>(n) * 4);
      } else {
        t.is_index = true;
        t.index.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) t.index[i] = read_integer(p + width * i, width, dtype == "U8");
      }
      out.emplace(name, std::move(t));
    }
  } catch (const JsonError& err) {
    throw SafetensorsError(where + ": not safetensors (" + err.what() + ")");
  }
  return out;
}

std::string safetensors_header(const std::vector<TensorRef>& tensors) {
  std::string header = "{";
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    const size_t bytes = static_cast<size_t>(t.numel()) * 4;
    header += (i ? ",\"" : "\"") + t.name + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) header += (d ? "," : "") + std::to_string(t.shape[d]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out;
  append_le64(out, header.size());
  return out + header;
}

std::string serialize_safetensors(const Tensors& tensors) {
  std::string header = "{";
  size_t offset = 0;
  bool first = true;
  for (const auto& [name, t] : tensors) {
    const size_t bytes = static_cast<size_t>(t.numel()) * (t.is_index ? 8 : 4);
    header += (first ? "\"" : ",\"") + name + "\":{\"dtype\":\"" + (t.is_index ? "I64" : "F32") + "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) header += (d ? "," : "") + std::to_string(t.shape[d]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
    first = false;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out;
  out.reserve(8 + header.size() + offset);
  append_le64(out, header.size());
  out += header;
  for (const auto& [name, t] : tensors) {
    if (t.is_index)
      out.append(reinterpret_cast<const char*>(t.index.data()), t.index.size() * 8);
    else
      out.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * 4);
  }
  return out;
}

}  // namespace edgetune
