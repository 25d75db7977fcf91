// Files the personalization job writes: whole files written and synced, directories removed, and the work
// directory of an unfinished job, ``.<out>.partial/`` beside its output (the Python device's name), where each
// finished candidate and the last epoch of the one in training are kept so that a killed job, run again on the
// same package, data and settings, goes on from there. Every record is written to a temporary name and renamed
// into place (``.<name>.t<pid>.tmp``: the names edgetune's Python writers sweep), so a kill leaves the previous
// record or the new one.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace edgetune {

// Writes ``bytes`` to ``path`` (created or truncated) and syncs it; failures throw PersonalStateError (io).
void write_file(const std::string& path, const std::string& bytes);
// Removes a directory of plain files (what the job writes), then the directory itself.
void remove_tree(const std::string& path);
std::string parent_of(const std::string& path);
std::string base_of(const std::string& path);
// ``path`` without trailing slashes.
std::string trimmed(const std::string& path);
// A temporary name beside ``path`` for this process: ``<dir>/.<name>.t<pid>.tmp``.
std::string temporary_beside(const std::string& path);

class WorkDir {
 public:
  // Opens the work directory of ``out`` for the job ``identity`` (a digest of everything that decides its
  // result): one left by the same job is resumed; one of another job is removed first.
  WorkDir(const std::string& out, const std::string& identity);
  bool resumed() const { return resumed_; }
  // A record's bytes, atomically; ``get`` returns false when there is none.
  void put(const std::string& name, const std::string& bytes) const;
  // A record written piece by piece (``fill`` hands each piece to the sink it is given), as atomically: a
  // large record is never assembled in memory.
  using Sink = std::function<void(const void* data, size_t size)>;
  void put_streamed(const std::string& name, const std::function<void(const Sink&)>& fill) const;
  bool get(const std::string& name, std::string& bytes) const;
  void remove(const std::string& name) const;
  // The whole directory, once the job's state is written.
  void remove_all() const;

 private:
  std::string path_;
  bool resumed_ = false;
};

}  // namespace edgetune
