"""What each process of the budget race runs (`test_budgets.test_racing_processes_...`):
threads that enqueue for one owner until refused, counted."""

from __future__ import annotations

import threading

from jobqueue import BudgetExceeded, JobQueue


def enqueue_racing(
    url: str, table: str, owner: str, estimate: str, threads: int, each: int
) -> tuple[int, int]:
    """``threads`` threads enqueue ``each`` jobs for ``owner``; (accepted, refused)."""
    queue = JobQueue(url, table=table)
    accepted: list[int] = []
    refused: list[int] = []
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(each):
            try:
                queue.enqueue("image", {}, owner_id=owner, estimated_cost=estimate)
                accepted.append(1)
            except BudgetExceeded:
                refused.append(1)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.close()
    return len(accepted), len(refused)
