"""ExecuTorch Python runtime (the same C++ runtime a phone links, through pybindings).

The Linux wheel registers the XNNPACK, QNN and OpenVINO backends; a .pte built for the Core ML
delegate only loads on Apple platforms.
"""

from __future__ import annotations

import numpy as np

from edgegen.artifact import Artifact
from edgegen.exporting.base import missing_packages
from edgegen.schema.manifest import ArtifactManifest

# Delegate name in the .pte -> backend id recorded in the manifest.
BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend"}


class ExecutorchBackend:
    def __init__(self, artifact: Artifact):
        from executorch.runtime import Runtime

        # A program exported with separate weight data loads it from the .ptd beside it.
        data = [artifact.folder / name for name in artifact.manifest.weight_files if name.endswith(".ptd")]
        program = Runtime.get().load_program(artifact.model_path, data_path=data[0] if data else None)
        self.method = program.load_method("forward")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        outputs = self.method.execute([torch.from_numpy(array) for array in inputs])
        return [output.numpy() for output in outputs]


class ExecutorchRuntime:
    name = "executorch"
    target = "executorch"
    packages = ("executorch",)

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        missing = missing_packages(self.packages, "executorch")
        if missing:
            return missing
        if manifest is not None and manifest.backend:
            from executorch.runtime import Runtime

            backend_id = BACKEND_IDS.get(manifest.backend, manifest.backend)
            registered = Runtime.get().backend_registry.registered_backend_names
            if backend_id not in registered:
                return f"this ExecuTorch runtime has no {backend_id} (it has {', '.join(registered)})"
        return None

    def import_toolchain(self) -> None:
        from executorch.runtime import Runtime

        Runtime.get()

    def load(self, artifact: Artifact, threads: int) -> ExecutorchBackend:
        # The pybindings share one process-wide threadpool (XNNPACK's); size it as asked.
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )

        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)
        return ExecutorchBackend(artifact)


RUNTIME = ExecutorchRuntime()
