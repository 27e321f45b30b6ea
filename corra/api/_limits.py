"""What one request to the API may be: limits the service keeps and clients plan for (a
module of its own, so that the command line knows them without importing the server)."""

#: The largest request body accepted (413 above).
MAX_BODY = 1 << 20
#: Seconds a request body may take to come in whole (408 after, and the connection closes):
#: a client sending a byte now and then would hold a connection forever. Slow enough for
#: `MAX_BODY` at 20 KB/s.
BODY_TIMEOUT = 60.0
#: Processes per ``POST /v1/processes:batch`` at most (and the body at most `MAX_BODY`).
MAX_BATCH = 1000
#: Items of a page (``GET /v1/processes``, ``GET /v1/processes/{id}/history``) unless the
#: request says; the most it may say.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
