"""The job functions of the README example: a module, so that workers can import it."""

from multistep_core import job


@job
def reindex(post_id: int) -> None:
    ...                                  # runs on any worker, in parallel


@job
def commit_index() -> None:
    print("index committed")             # runs once, after every reindex job
