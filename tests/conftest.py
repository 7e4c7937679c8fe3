import os

import torch  # importing torch does not import triton

# Must precede any @triton.jit decorator (i.e. any import of sfmp_compile.codegen). Without a GPU the
# kernels run on Triton's interpreter, which is how CI checks them against the reference op; with
# one they are compiled and run on it (TRITON_INTERPRET set in the environment wins either way).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "sfmp", deadline=None, max_examples=25, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sfmp"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
