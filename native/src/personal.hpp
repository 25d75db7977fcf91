// A personal state (docs/package-format.md, "Personal state") read and verified as the spec says: the format,
// schema version 1, the seal of personal.json, the size and sha256 of delta.safetensors, exactly the tensors
// listed, and the package identity (backbone hash, cut, number of blocks, labels, the hashes of the files that
// make the features and the base top). Then applied to the top's tensors for the kinds this library applies.
#pragma once

#include <memory>
#include <string>

#include "json.hpp"
#include "package.hpp"
#include "safetensors.hpp"

namespace edgetune {

struct PersonalStateError : std::runtime_error {
  enum class Kind { Io, Format, Unsupported, Mismatch };
  PersonalStateError(Kind kind_, const std::string& message) : std::runtime_error(message), kind(kind_) {}
  Kind kind;
};

struct PersonalState {
  std::string path;
  Json manifest;
  std::string kind;  // top_delta, fala or kept_global
  int train_cut = 0;
  std::string tuner;  // full, lora, roselora, dsee, none, fala
  Tensors tensors;
};

// The identity of ``package`` that a state carries (the spec's "package" object; backbone_id only for messages).
Json package_identity(const Package& package);

// Reads and verifies the state at ``directory`` and checks that it belongs to ``package``.
std::unique_ptr<PersonalState> read_personal_state(const std::string& directory, const Package& package);

// ``tensors`` (named as the top's) with every LoRA pair (``M.lora_A.default.weight`` (r, in),
// ``M.lora_B.default.weight`` (out, r)) folded into a copy of ``top``'s ``M.weight``: W + scale B A in place of the
// pair; the other tensors as they are. Faults name ``where``.
Tensors fold_lora(const Tensors& top, const Tensors& tensors, double scale, const std::string& where);

// ``alpha / r`` of a LoRA tuner's params (a state's tuner.params, or a LoRA program's): the scale fold_lora takes.
double lora_scale(const Json& params);

// The top's tensors (top.safetensors) with ``state`` applied: kept_global unchanged; top_delta of tuner full
// (the state's tensors replace the package's, blocks renumbered from the trained view) or lora (W += alpha/r B A
// per adapted projection, for families whose projections are (out, in) matrices); fala (the personal matrix and
// head folded into one head, plain and residual forms). Other kinds are Unsupported.
void apply_personal_state(Tensors& top, const Json& top_spec, const std::string& family, const PersonalState& state);

}  // namespace edgetune
