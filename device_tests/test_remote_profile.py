"""Profile the embedded default's artifacts on the attached device; results use the local schema."""

import pytest

from edgegen.measure.remote import profile_on_device

pytestmark = pytest.mark.device


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_every_component_profiles_on_the_device(device_address, device_artifacts, target):
    for artifact in device_artifacts[target]:
        result = profile_on_device(artifact.folder, device_address, warmup=3, runs=10, threads=1)
        assert result.kind == "profile" and result.component == artifact.manifest.component
        assert result.latency.p90_ms >= result.latency.p50_ms > 0
        assert result.memory.peak_rss_mb >= result.memory.baseline_rss_mb
