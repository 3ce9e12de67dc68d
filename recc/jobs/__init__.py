"""RECC's reference job: group-wise sums of simulation Parquet files, memory-bounded.

>>> from recc.jobs import generate, aggregate
>>> generate("/tmp/sims", files=8, groups=2, paths=1000)  # doctest: +SKIP
>>> aggregate("/tmp/sims", "/tmp/sums", n_workers=2).raise_for_errors()  # doctest: +SKIP

See :mod:`recc.jobs.aggregate` for how the job bounds memory and stays fast.
"""

from recc.jobs.aggregate import AggregateResult, GroupResult, JobError, aggregate
from recc.jobs.generate import Generated, generate

__all__ = ["AggregateResult", "Generated", "GroupResult", "JobError", "aggregate", "generate"]
