import os

from flask_sse_stream import Publisher

# The same URL (and key prefix) as the web app's SSE_BROKER_URL.
publisher = Publisher(os.environ.get("SSE_BROKER_URL", "redis://localhost:6379/0"))


def report_done(job_id: int) -> str:
    """Tell every browser subscribed to "jobs", on every worker, that a job finished."""
    return publisher.publish({"job": job_id, "state": "done"}, channel="jobs", event="job")
