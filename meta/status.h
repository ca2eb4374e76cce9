// Status and Result<T>: errors as values, the error currency of every module.
//
// A Status is either OK or carries an error code (a POSIX errno where one
// fits, so the FUSE edge can map it without guessing) and a message that says
// what failed, on what, and what to do. Thread-safety: values, no shared state.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace mirrorfs::meta {

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  // `err` is a positive errno value; `message` says what failed and on what.
  static Status Error(int err, std::string message) {
    return Status(err == 0 ? EIO : err, std::move(message));
  }
  // Convenience: the errno of the current thread, prefixed by `what`.
  static Status FromErrno(const std::string& what);

  bool ok() const { return err_ == 0; }
  int err() const { return err_; }
  const std::string& message() const { return message_; }
  // "message" for errors, "ok" for success.
  std::string ToString() const { return ok() ? "ok" : message_; }
  // Returns a copy whose message is "`context`: <message>".
  Status Context(const std::string& context) const {
    if (ok()) return *this;
    return Status(err_, context + ": " + message_);
  }
  void IgnoreError() const {}

 private:
  Status(int err, std::string message)
      : err_(err), message_(std::move(message)) {}
  int err_ = 0;
  std::string message_;
};

// Either a value or an error Status (never an OK Status without a value).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {
    if (std::get<Status>(v_).ok()) v_ = Status::Error(EINVAL, "empty Result");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }
  // REQUIRES: ok()
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace mirrorfs::meta

// Returns early from the enclosing function if `expr` is an error Status.
#define MFS_RETURN_IF_ERROR(expr)             \
  do {                                        \
    ::mirrorfs::meta::Status _mfs_s = (expr); \
    if (!_mfs_s.ok()) return _mfs_s;          \
  } while (0)
