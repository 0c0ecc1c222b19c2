"""Builds aria_hpc._C from csrc/ through CMake (pybind11's cmake_example pattern).

Environment: ARIA_CUDA=AUTO|ON|OFF (compile csrc/cuda when a toolchain is found / required / never),
ARIA_TSAN=1 (ThreadSanitizer build), CMAKE_BUILD_PARALLEL_LEVEL (jobs).
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DARIA_CUDA={os.environ.get('ARIA_CUDA', 'AUTO')}",
            f"-DARIA_TSAN={'ON' if os.environ.get('ARIA_TSAN', '0') not in ('', '0') else 'OFF'}",
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ROOT), *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


setup(
    ext_modules=[CMakeExtension("aria_hpc._C")],
    cmdclass={"build_ext": CMakeBuild},
)
