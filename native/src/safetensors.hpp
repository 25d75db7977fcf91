// safetensors (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON header
// naming each tensor's dtype, shape and byte range, then the data. The library reads the top's and a personal
// state's tensors with it and writes personal states; float32 values, and integer index tensors (I64, I32,
// I16, I8, U8) widened to int64.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgetune {

struct SafetensorsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;   // F32 tensors
  std::vector<int64_t> index;  // integer tensors (positions), widened
  bool is_index = false;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

using Tensors = std::map<std::string, Tensor>;

// The tensors of a safetensors file's bytes; ``where`` names the file in errors (a bad header, a range outside
// the data, a dtype other than F32 or an integer type).
Tensors parse_safetensors(const std::string& bytes, const std::string& where);

// A safetensors file's bytes holding ``tensors`` (F32, or I64 for index tensors), names in sorted order.
std::string serialize_safetensors(const Tensors& tensors);

// A float32 tensor held elsewhere (written without a copy).
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// The same format for F32 tensors held elsewhere, handed to ``sink`` piece by piece (header, then each tensor's
// data in the order given): a large file written without assembling it in memory.
template <class Sink>
void write_safetensors(const std::vector<TensorRef>& tensors, Sink&& sink);

// The header part (8-byte length and JSON) of such a file.
std::string safetensors_header(const std::vector<TensorRef>& tensors);

template <class Sink>
void write_safetensors(const std::vector<TensorRef>& tensors, Sink&& sink) {
  const std::string header = safetensors_header(tensors);
  sink(header.data(), header.size());
  for (const TensorRef& t : tensors) sink(t.data, static_cast<size_t>(t.numel()) * 4);
}

}  // namespace edgetune
