// Python bindings only: aria_hpc._C. The sole importer is aria_hpc/regions/table.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "gather.hpp"
#include "region_table.hpp"
#ifdef ARIA_WITH_CUDA
#include "cuda/region_stats.hpp"
#endif

namespace py = pybind11;
using aria::RegionTable;

namespace {

using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using ValueArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> to_numpy(const std::vector<double>& v) {
  return py::array_t<double>(static_cast<py::ssize_t>(v.size()), v.data());
}

std::vector<double> to_vector(const ValueArray& a, int64_t expected, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != expected) {
    throw std::invalid_argument(std::string(name) + " must have shape (" +
                                std::to_string(expected) + ",)");
  }
  return std::vector<double>(a.data(), a.data() + a.shape(0));
}

// State keys, in the order state_dict() lists them; all float64 vectors of length K.
std::vector<double> RegionTable::*const kStateVectors[] = {
    &RegionTable::ema_mean_, &RegionTable::ema_sq_,       &RegionTable::ema_weight_,
    &RegionTable::age_,      &RegionTable::observations_, &RegionTable::q_,
    &RegionTable::base_};
const char* const kStateNames[] = {"ema_mean", "ema_sq", "ema_weight", "age", "observations", "q", "base"};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "aria_hpc native core: the lock-free region statistics table";
#ifdef ARIA_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif

#ifdef ARIA_WITH_CUDA
  // Raw device pointers and a raw stream (no libtorch link): the facade passes tensor.data_ptr()
  // and torch.cuda.current_stream().cuda_stream.
  m.def(
      "cuda_region_stats",
      [](uintptr_t ids, uintptr_t values, bool values_float64, int64_t n, int64_t k, uintptr_t out,
         uintptr_t error, uintptr_t stream) {
        aria::cuda_region_stats(reinterpret_cast<const int64_t*>(ids), reinterpret_cast<const void*>(values),
                                values_float64 ? aria::ValueType::kFloat64 : aria::ValueType::kFloat32, n, k,
                                reinterpret_cast<double*>(out), reinterpret_cast<int*>(error),
                                reinterpret_cast<void*>(stream));
      },
      py::arg("ids"), py::arg("values"), py::arg("values_float64"), py::arg("n"), py::arg("k"), py::arg("out"),
      py::arg("error"), py::arg("stream"));
#endif

  m.def(
      "gather_rows",
      [](py::buffer src, py::array_t<int64_t, py::array::c_style | py::array::forcecast> idx, py::buffer dst) {
        py::buffer_info s = src.request(), d = dst.request(true);
        if (s.ndim < 1 || d.ndim < 1 || s.itemsize != d.itemsize) throw std::invalid_argument("gather_rows: src and dst must be arrays of one item type");
        auto row_bytes = [](const py::buffer_info& b) {
          int64_t bytes = b.itemsize;
          for (py::ssize_t k = b.ndim - 1; k >= 0; --k) {
            if (b.strides[k] != bytes) throw std::invalid_argument("gather_rows: src and dst must be C-contiguous");
            if (k > 0) bytes *= b.shape[k];
          }
          return bytes;
        };
        const int64_t rb = row_bytes(s);
        if (row_bytes(d) != rb) throw std::invalid_argument("gather_rows: src and dst rows differ in size");
        const int64_t n = idx.size();
        if (d.shape[0] != n) throw std::invalid_argument("gather_rows: dst must have one row per index");
        const auto* src_ptr = static_cast<const std::uint8_t*>(s.ptr);
        auto* dst_ptr = static_cast<std::uint8_t*>(d.ptr);
        const int64_t* ip = idx.data();
        const int64_t rows = s.shape[0];
        int64_t bad;
        {
          py::gil_scoped_release release;
          bad = aria::gather_rows(src_ptr, rows, rb, ip, n, dst_ptr);
        }
        if (bad >= 0) throw std::out_of_range("gather_rows: index " + std::to_string(ip[bad]) + " out of range");
      },
      py::arg("src"), py::arg("idx"), py::arg("dst"),
      "dst[i] = src[idx[i]] for C-contiguous row arrays (one memcpy per row, GIL released).");

  m.def(
      "counter_uniform",
      [](uint64_t key, int64_t n) {
        py::array_t<double> out(n);
        auto* p = out.mutable_data();
        for (int64_t i = 0; i < n; ++i) p[i] = aria::counter_uniform(key, static_cast<uint64_t>(i));
        return out;
      },
      py::arg("key"), py::arg("n"), "Uniforms in [0, 1) for counters 0..n-1 (tests).");

  py::class_<RegionTable>(m, "RegionTable")
      .def(py::init([](int64_t num_regions, std::optional<ValueArray> base, double init_estimate) {
             std::vector<double> b;
             if (base) b = to_vector(*base, num_regions, "base");
             return new RegionTable(num_regions, std::move(b), init_estimate);
           }),
           py::arg("num_regions"), py::arg("base") = py::none(), py::arg("init_estimate") = 1.0)
      .def_property_readonly("num_regions", &RegionTable::num_regions)
      .def_readonly("init_estimate", &RegionTable::init_estimate_)
      .def_readonly("folds", &RegionTable::folds_)
      .def_property_readonly(
          "accumulators",
          [](py::object self) {
            auto& t = self.cast<RegionTable&>();
            double* block = t.accumulators();  // settles the stripes first
            const auto k = static_cast<py::ssize_t>(t.num_regions());
            // Shares the table's memory; `self` as base keeps the table alive.
            return py::array_t<double>({py::ssize_t{RegionTable::kRows}, k},
                                       {k * py::ssize_t{sizeof(double)}, py::ssize_t{sizeof(double)}},
                                       block, self);
          },
          "(3, K) float64 view of [sum, sum of squares, count], sharing memory with the table; "
          "reading it settles the private stripes, so it holds every record() returned so far.")
      .def("settle", &RegionTable::settle)
      .def(
          "record",
          [](RegionTable& t, const IdArray& ids, const ValueArray& values) {
            if (ids.ndim() != 1 || values.ndim() != 1 || ids.shape(0) != values.shape(0)) {
              throw std::invalid_argument("region_ids and values must be 1-D of equal length");
            }
            const int64_t* ip = ids.data();
            const double* vp = values.data();
            const int64_t n = ids.shape(0);
            py::gil_scoped_release release;
            t.record(ip, vp, n);
          },
          py::arg("region_ids"), py::arg("values"))
      .def("fold", &RegionTable::fold, py::arg("beta"))
      .def(
          "probabilities",
          [](RegionTable& t, double alpha, double eps, double gamma) {
            return to_numpy(t.probabilities(alpha, eps, gamma));
          },
          py::arg("alpha"), py::arg("eps"), py::arg("gamma") = 0.0)
      .def(
          "set_probabilities",
          [](RegionTable& t, const ValueArray& q) {
            t.set_probabilities(to_vector(q, t.num_regions(), "probabilities"));
          },
          py::arg("q"))
      .def(
          "sample",
          [](const RegionTable& t, int64_t n, uint64_t key) {
            if (n < 0) throw std::invalid_argument("n must be >= 0");
            py::array_t<int64_t> out(n);
            int64_t* p = out.mutable_data();
            py::gil_scoped_release release;
            t.sample(n, key, p);
            return out;
          },
          py::arg("n"), py::arg("key"))
      .def("estimate", [](const RegionTable& t) { return to_numpy(t.estimate()); })
      .def("variance", [](const RegionTable& t) { return to_numpy(t.variance()); })
      .def("base", [](const RegionTable& t) { return to_numpy(t.base_); })
      .def("alias_table",
           [](const RegionTable& t) {
             return py::make_tuple(to_numpy(t.alias_prob_),
                                   py::array_t<int64_t>(static_cast<py::ssize_t>(t.alias_index_.size()),
                                                        t.alias_index_.data()));
           })
      .def("get_state",
           [](const RegionTable& t) {
             py::dict state;
             for (size_t i = 0; i < std::size(kStateNames); ++i) {
               state[kStateNames[i]] = to_numpy(t.*kStateVectors[i]);
             }
             state["folds"] = t.folds_;
             return state;
           })
      .def("set_state", [](RegionTable& t, const py::dict& state) {
        std::vector<std::vector<double>> vectors;
        for (const char* name : kStateNames) {
          if (!state.contains(name)) throw std::invalid_argument(std::string("state lacks '") + name + "'");
          vectors.push_back(to_vector(state[name].cast<ValueArray>(), t.num_regions(), name));
        }
        for (size_t i = 0; i < vectors.size(); ++i) t.*kStateVectors[i] = std::move(vectors[i]);
        t.folds_ = state["folds"].cast<int64_t>();
        t.set_probabilities(t.q_);
      });
}
