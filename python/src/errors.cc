// mha's exceptions as Python's: InvalidArgument -> ValueError, Unsupported -> NotImplementedError,
// CapacityExceeded -> mha.CapacityExceededError (a RuntimeError), OutOfMemory -> MemoryError,
// IoError -> OSError. The C++ message is kept, and the offending argument's name is the
// exception's `argument` attribute.
#include <nanobind/nanobind.h>

#include "bindings.h"
#include "mha/errors.h"

namespace mha::py {

namespace {

PyObject* capacity_exceeded = nullptr;

void raise(PyObject* type, const Error& e) {
  nb::object exc = nb::steal(PyObject_CallFunction(type, "s", e.what()));
  if (!exc.is_valid()) return;  // the constructor raised; that error stands
  nb::setattr(exc, "argument", nb::str(e.argument().c_str()));
  PyErr_SetObject(type, exc.ptr());
}

}  // namespace

void bind_errors(nb::module_& m) {
  capacity_exceeded = PyErr_NewExceptionWithDoc(
      "mha.CapacityExceededError",
      "A fixed-capacity resource of mha (a KV cache, its block pool, its sequence slots) is full.",
      PyExc_RuntimeError, nullptr);
  m.attr("CapacityExceededError") = nb::handle(capacity_exceeded);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      raise(PyExc_ValueError, e);
    } catch (const Unsupported& e) {
      raise(PyExc_NotImplementedError, e);
    } catch (const CapacityExceeded& e) {
      raise(capacity_exceeded, e);
    } catch (const OutOfMemory& e) {
      raise(PyExc_MemoryError, e);
    } catch (const IoError& e) {
      raise(PyExc_OSError, e);
    } catch (const Error& e) {
      raise(PyExc_RuntimeError, e);
    }
  });
}

}  // namespace mha::py
