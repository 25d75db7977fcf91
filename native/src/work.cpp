#include "work.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "personal.hpp"

namespace edgetune {

namespace {

[[noreturn]] void write_error(const std::string& message) {
  throw PersonalStateError(PersonalStateError::Kind::Io, message);
}

void sync_directory(const std::string& path) {
  if (int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

namespace {

// ``path`` created or truncated, filled by ``fill`` through a sink, synced and closed.
void write_pieces(const std::string& path, const std::function<void(const WorkDir::Sink&)>& fill) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) write_error(path + ": cannot be written");
  try {
    fill([&](const void* data, size_t size) {
      const char* p = static_cast<const char*>(data);
      while (size > 0) {
        ssize_t n = ::write(fd, p, size);
        if (n <= 0) write_error(path + ": write failed");
        p += n;
        size -= static_cast<size_t>(n);
      }
    });
  } catch (...) {
    ::close(fd);
    throw;
  }
  const bool ok = ::fsync(fd) == 0;
  if (::close(fd) != 0 || !ok) write_error(path + ": write failed");
}

}  // namespace

void write_file(const std::string& path, const std::string& bytes) {
  write_pieces(path, [&](const WorkDir::Sink& sink) { sink(bytes.data(), bytes.size()); });
}

void remove_tree(const std::string& path) {
  if (DIR* dir = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((path + "/" + name).c_str());
    }
    ::closedir(dir);
  }
  ::rmdir(path.c_str());
}

std::string parent_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string trimmed(const std::string& path) {
  std::string out = path;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::string temporary_beside(const std::string& path) {
  char pid[16];
  std::snprintf(pid, sizeof pid, "t%08ld", static_cast<long>(::getpid()));
  return parent_of(path) + "/." + base_of(path) + "." + pid + ".tmp";
}

WorkDir::WorkDir(const std::string& out, const std::string& identity) {
  const std::string target = trimmed(out);
  path_ = parent_of(target) + "/." + base_of(target) + ".partial";
  std::string held;
  if (get("job.id", held) && held == identity) {
    resumed_ = true;
    return;
  }
  remove_tree(path_);  // another job's records (or none): they cannot be resumed
  if (::mkdir(path_.c_str(), 0755) != 0) write_error(path_ + ": cannot create the job's work directory");
  put("job.id", identity);
}

void WorkDir::put(const std::string& name, const std::string& bytes) const {
  put_streamed(name, [&](const Sink& sink) { sink(bytes.data(), bytes.size()); });
}

void WorkDir::put_streamed(const std::string& name, const std::function<void(const Sink&)>& fill) const {
  const std::string path = path_ + "/" + name, tmp = temporary_beside(path);
  try {
    write_pieces(tmp, fill);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    write_error(path + ": cannot be written");
  }
  sync_directory(path_);
}

bool WorkDir::get(const std::string& name, std::string& bytes) const {
  std::ifstream in(path_ + "/" + name, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return false;
  bytes = buffer.str();
  return true;
}

void WorkDir::remove(const std::string& name) const { ::unlink((path_ + "/" + name).c_str()); }

void WorkDir::remove_all() const { remove_tree(path_); }

}  // namespace edgetune
