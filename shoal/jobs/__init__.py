"""Asynchronous inference: jobs accepted at once, queued durably, run by workers through the server's own
data plane, results written to object storage, webhooks when done. See docs/ASYNC.md."""
