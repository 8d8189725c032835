"""TEST DOUBLES of TensorRT and pycuda, for exercising our TensorRT code on a CPU.

They are strict where the real APIs are strict, so the bugs a device would hit fail here:
- pycuda: allocations, streams and copies raise LogicError unless a context is pushed (as
  pycuda does: "no currently active context"); retained primary contexts are counted, so a
  leak shows.
- the builder serialises a plan (a small JSON naming the ONNX file, profile and DLA core),
  runs the INT8 calibrator the way TensorRT does (get_batch inside
  build_serialized_network) and serialises its timing cache;
- the runtime refuses a DLA plan unless `Runtime.DLA_core` names its core before
  deserialising; the execution context checks input shapes against the profile and runs the
  plan's ONNX file with ONNX Runtime on the bytes copied to the fake device.

Nothing here is TensorRT: no test uses these to claim a TensorRT result, only to check our
buffer handling, keys, calibration plumbing and error paths.
"""

from __future__ import annotations

import enum
import importlib.machinery
import itertools
import json
import sys
import types

import numpy as np


# -- pycuda ---------------------------------------------------------------------------------------
class FakeCuda(types.ModuleType):
    """Stands in for `pycuda.driver`."""

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")

    def __init__(self, name: str = "Orin", cc=(8, 7), sms: int = 8) -> None:
        super().__init__("pycuda.driver")
        self.stack: list[object] = []  # pushed contexts
        self.live_contexts = 0  # retained primary contexts not yet released
        self.memory: dict[int, np.ndarray] = {}  # fake device allocations by pointer
        self._pointers = itertools.count(0x1000, 0x1000)
        cuda = self

        class Context:
            def __init__(self) -> None:
                cuda.live_contexts += 1

            def push(self) -> None:
                cuda.stack.append(self)

            def __del__(self) -> None:
                cuda.live_contexts -= 1

            @staticmethod
            def pop() -> None:
                if not cuda.stack:
                    raise cuda.LogicError("cuCtxPopCurrent failed: invalid device context")
                cuda.stack.pop()

        class Device:
            def __init__(self, ordinal: int) -> None:
                if ordinal >= 1:
                    raise cuda.LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")

            @staticmethod
            def count() -> int:
                return 1

            def name(self) -> str:
                return name

            def compute_capability(self) -> tuple[int, int]:
                return cc

            def get_attribute(self, attr) -> int:
                return sms

            def total_memory(self) -> int:
                return 8 << 30

            def retain_primary_context(self) -> Context:
                return Context()

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                cuda._need_context("cuMemAlloc")
                self.ptr = next(cuda._pointers)
                cuda.memory[self.ptr] = np.zeros(nbytes, np.uint8)

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                cuda._need_context("cuMemFree")
                del cuda.memory[self.ptr]

        class Stream:
            def __init__(self) -> None:
                cuda._need_context("cuStreamCreate")
                self.handle = next(cuda._pointers)

            def synchronize(self) -> None:
                cuda._need_context("cuStreamSynchronize")

        self.Context, self.Device, self.Stream = Context, Device, Stream
        self._Allocation = Allocation

    def _need_context(self, what: str) -> None:
        if not self.stack:
            raise self.LogicError(
                f"{what} failed: explicit_context_dependent failed: invalid device context - "
                "no currently active context?"
            )

    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int):
        return self._Allocation(nbytes)

    def pagelocked_empty(self, count: int, dtype) -> np.ndarray:
        self._need_context("cuMemHostAlloc")
        return np.zeros(count, dtype)

    def memcpy_htod_async(self, dest, src: np.ndarray, stream=None) -> None:
        self._need_context("cuMemcpyHtoDAsync")
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.memory[int(dest)][: raw.size] = raw

    def memcpy_dtoh_async(self, dest: np.ndarray, src, stream=None) -> None:
        self._need_context("cuMemcpyDtoHAsync")
        raw = dest.view(np.uint8).reshape(-1)
        raw[:] = self.memory[int(src)][: raw.size]

    def read(self, ptr: int, dtype, count: int) -> np.ndarray:
        return self.memory[ptr][: count * np.dtype(dtype).itemsize].view(dtype)


def install_fake_cuda(monkeypatch, cuda: FakeCuda | None = None) -> FakeCuda:
    cuda = cuda or FakeCuda()
    package = types.ModuleType("pycuda")
    package.driver = cuda
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return cuda


# -- TensorRT -------------------------------------------------------------------------------------
def plan_bytes(onnx: str, profile, shape, dla_core) -> bytes:
    return json.dumps(
        {"onnx": onnx, "profile": list(profile), "shape": list(shape), "dla_core": dla_core}
    ).encode()


class FakeTrt(types.ModuleType):
    """Stands in for `tensorrt`: builder side (records calls) and runtime side."""

    def __init__(
        self,
        cuda: FakeCuda | None,
        version: str = "10.3.0",
        parse_ok: bool = True,
        build_ok: bool = True,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.calls: list = []
        self.runtimes: list = []
        calls, trt = self.calls, self
        self.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 GPU_FALLBACK", start=0)
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED", start=0
        )
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")
        self.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")

        class Logger:
            WARNING, VERBOSE = 2, 4

            def __init__(self, level) -> None:
                pass

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                calls.append(("profile", name, lo, opt, hi))
                self.shapes = (lo, opt, hi)

        class TimingCache:
            def serialize(self) -> bytes:
                return b"timing-cache"

        class Config:
            def __init__(self) -> None:
                object.__setattr__(self, "profiles", [])
                object.__setattr__(self, "values", {})

            def set_memory_pool_limit(self, pool, size):
                calls.append(("workspace", size))

            def set_flag(self, f):
                calls.append(("flag", f.name))

            def add_optimization_profile(self, p):
                calls.append(("add_profile",))
                self.profiles.append(p)

            def create_timing_cache(self, blob):
                calls.append(("timing_cache", len(blob)))
                return TimingCache()

            def set_timing_cache(self, cache, ignore_mismatch):
                calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return TimingCache()

            def set_calibration_profile(self, p):
                calls.append(("calibration_profile", p.shapes[0]))

            def __setattr__(self, name, value):
                calls.append(("config", name, value))
                self.values[name] = value

        class Network:
            num_inputs = 1

            def __init__(self) -> None:
                self.source = None

            def get_input(self, i):
                return types.SimpleNamespace(name="input")

        class Err:
            def node(self):
                return 3

            def node_operator(self):
                return "Conv"

            def node_name(self):
                return "conv0"

            def desc(self):
                return "weights are not initializers"

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                calls.append(("parse", path))
                self.network.source = path
                return parse_ok

            def get_error(self, i):
                return Err()

        class Builder:
            num_DLA_cores = 2
            platform_has_fast_int8 = True

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(("build",))
                calibrator = config.values.get("int8_calibrator")
                if calibrator is not None:  # TensorRT calls it from inside the build
                    if not getattr(calibrator, "_base_initialised", False):
                        raise TypeError("IInt8EntropyCalibrator2.__init__ was not called")
                    if calibrator.read_calibration_cache() is None:
                        calibrator.get_batch_size()
                        while calibrator.get_batch(["input"]) is not None:
                            calls.append(("calibration_batch",))
                        calibrator.write_calibration_cache(b"calibration-table")
                if not build_ok:
                    return None
                lo, opt, hi = config.profiles[0].shapes
                dla = config.values.get("DLA_core")
                return plan_bytes(network.source, [lo[0], opt[0], hi[0]], lo[1:], dla)

        class Engine:
            def __init__(self, plan: dict) -> None:
                import onnxruntime as ort

                self.plan = plan
                self.session = ort.InferenceSession(
                    plan["onnx"], providers=["CPUExecutionProvider"]
                )
                self.outputs = [o.name for o in self.session.get_outputs()]
                probe = np.zeros((1, *plan["shape"]), np.float32)
                got = self.session.run(self.outputs, {"input": probe})
                self.sample_shapes = {
                    n: v.shape[1:] for n, v in zip(self.outputs, got, strict=True)
                }
                self.num_io_tensors = 1 + len(self.outputs)

            def get_tensor_name(self, i):
                return (["input"] + self.outputs)[i]

            def get_tensor_mode(self, name):
                return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

            def get_tensor_profile_shape(self, name, index):
                shape = tuple(self.plan["shape"])
                return [(b, *shape) for b in self.plan["profile"]]

            def get_tensor_dtype(self, name):
                return "float32"

            def create_execution_context(self):
                return Context(self)

        class Context:
            def __init__(self, engine: Engine) -> None:
                self.engine, self.batch, self.addresses = engine, None, {}

            def set_input_shape(self, name, shape):
                lo, _, hi = self.engine.plan["profile"]
                ok = lo <= shape[0] <= hi and list(shape[1:]) == self.engine.plan["shape"]
                self.batch = shape[0] if ok else None
                return ok

            def get_tensor_shape(self, name):
                if name == "input":
                    return (self.batch, *self.engine.plan["shape"])
                return (self.batch, *self.engine.sample_shapes[name])

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr

            def execute_async_v3(self, stream):
                cuda._need_context("execute_async_v3")
                shape = self.get_tensor_shape("input")
                x = cuda.read(self.addresses["input"], np.float32, int(np.prod(shape)))
                got = self.engine.session.run(self.engine.outputs, {"input": x.reshape(shape)})
                for name, value in zip(self.engine.outputs, got, strict=True):
                    raw = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
                    cuda.memory[self.addresses[name]][: raw.size] = raw
                return True

        class Runtime:
            def __init__(self, logger) -> None:
                self.DLA_core = -1  # TensorRT's "no DLA core chosen"
                trt.runtimes.append(self)

            def deserialize_cuda_engine(self, data: bytes):
                plan = json.loads(bytes(data))
                if plan["dla_core"] is not None and self.DLA_core != plan["dla_core"]:
                    return None  # a DLA plan needs its core named before deserialising
                return Engine(plan)

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                self._base_initialised = True  # pybind11: the real base must be initialised

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, Parser, Runtime
        self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    @staticmethod
    def nptype(dtype) -> type:
        return np.float32


def install_fake_trt(monkeypatch, trt: FakeTrt) -> FakeTrt:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt
