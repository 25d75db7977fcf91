// split_check: the library's job randomness on the command line, for tests/test_native_train.py to compare with
// device_sim.split and numpy. Each stdin line: KIND SEED FRACTION LABEL... (KIND: validation, guard or order;
// for order FRACTION is the epoch and the labels' count is n); prints the held-out (or ordered) indices.
#include <iostream>
#include <sstream>
#include <string>

#include "split.hpp"

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string kind;
    uint64_t seed;
    double fraction;
    in >> kind >> seed >> fraction;
    std::vector<int64_t> labels;
    for (int64_t y; in >> y;) labels.push_back(y);
    edgetune::Indices out;
    if (kind == "validation") out = edgetune::validation_split(labels, fraction, seed).second;
    else if (kind == "guard") out = edgetune::guard_split(labels, fraction, seed).second;
    else out = edgetune::epoch_order(static_cast<int64_t>(labels.size()), seed, static_cast<uint64_t>(fraction));
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << "\n";
  }
}
