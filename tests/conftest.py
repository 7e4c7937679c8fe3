import os

# Must precede any @triton.jit decorator (i.e. any import of sfmp_compile.codegen): kernels then run
# on the Triton interpreter, which is how CI (no GPU) checks them against the reference op.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "sfmp", deadline=None, max_examples=25, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sfmp"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
