"""An in-process fake of the Google Cloud Storage JSON API, for tests without a network.

    server = fake_gcs.start()          # a thread serving http://127.0.0.1:<port>
    os.environ.update(server.env)      # before the clients start: gcsfs, tensorstore
    ...
    server.objects                     # {(bucket, name): (generation, bytes)}
    server.requests                    # [(method, path and query)] as they came
    server.stop()

Only the subset that gcsfs and tensorstore send (found by logging their
requests): object upload (uploadType media and multipart), metadata and media
GET (with Range), list (prefix, delimiter, startOffset, endOffset, pageToken),
DELETE, rewriteTo (gcsfs's copy), moveTo (its rename) and batch DELETE (gcsfs's rm), with the
preconditions ifGenerationMatch (412 when it fails; 0: must not exist) and
ifGenerationNotMatch (304 on a read). Every bucket exists. Each write gets
the next generation of one counter, as GCS's generations only grow.
"""

import datetime
import http.server
import json
import re
import sys
import threading
import urllib.parse

_PAGE = 1000  # GCS's own maximum of list results a page


class _State:
  def __init__(self):
    self.objects = {}  # (bucket, name) -> (generation, data, updated)
    self.requests = []
    self.lock = threading.Lock()
    self.generation = 1000
    self.uploads = {}  # upload_id -> (bucket, name, query at initiation, data so far)


def _now():
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _resource(bucket, name, generation, data, updated):
  return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
          "generation": str(generation), "metageneration": "1", "updated": updated,
          "timeCreated": updated, "contentType": "application/octet-stream",
          "id": f"{bucket}/{name}/{generation}"}


def _precondition(query, current):
  """An HTTP status if the ifGeneration* parameters fail for the object's generation
  `current` (None: absent), else None."""
  match = query.get("ifGenerationMatch")
  if match is not None and int(match) != (current or 0):
    return 412
  not_match = query.get("ifGenerationNotMatch")
  if not_match is not None and current is not None and int(not_match) == current:
    return 304
  return None


def _handler(state):
  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: state.requests has them
      pass

    def _reply(self, status, body=b"", content_type="application/json", headers=()):
      if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      for key, value in headers:
        self.send_header(key, value)
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _error(self, status, message):
      self._reply(status, {"error": {"code": status, "message": message,
                                     "errors": [{"message": message}]}})

    def _body(self):
      length = int(self.headers.get("Content-Length") or 0)
      return self.rfile.read(length) if length else b""

    def _route(self):
      url = urllib.parse.urlsplit(self.path)
      query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
      with state.lock:
        state.requests.append((self.command, self.path))
      return url.path, query

    # --------------------------------------------------------------- reads
    def do_GET(self):
      path, query = self._route()
      m = re.fullmatch(r"(?:/storage/v1|/download/storage/v1)/b/([^/]+)/o/(.+)", path)
      if m:
        return self._get(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2]), query)
      m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/?", path)
      if m:
        return self._list(urllib.parse.unquote(m[1]), query)
      m = re.fullmatch(r"/storage/v1/b/([^/]+)/?", path)
      if m:
        return self._reply(200, {"kind": "storage#bucket", "name": m[1], "id": m[1]})
      self._error(404, f"no such route {path}")

    do_HEAD = do_GET

    def _get(self, bucket, name, query):
      with state.lock:
        found = state.objects.get((bucket, name))
      if found is None:
        return self._error(404, f"No such object: {bucket}/{name}")
      generation, data, updated = found
      if "generation" in query and int(query["generation"]) != generation:
        return self._error(404, f"No such object: {bucket}/{name}#{query['generation']}")
      status = _precondition(query, generation)
      if status == 304:
        return self._reply(304, headers=[("x-goog-generation", str(generation))])
      if status:
        return self._error(status, "Precondition Failed")
      if query.get("alt") != "media":
        return self._reply(200, _resource(bucket, name, generation, data, updated))
      headers = [("x-goog-generation", str(generation)), ("x-goog-metageneration", "1")]
      ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
      if ranged:
        if ranged[1]:
          start = int(ranged[1])
          end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
        else:  # bytes=-N: the last N
          start, end = max(len(data) - int(ranged[2]), 0), len(data) - 1
        if start >= len(data) and len(data):
          return self._error(416, "Requested range not satisfiable")
        headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
        return self._reply(206, data[start:end + 1], "application/octet-stream", headers)
      self._reply(200, data, "application/octet-stream", headers)

    def _list(self, bucket, query):
      prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
      start, end = query.get("startOffset", ""), query.get("endOffset")
      with state.lock:
        names = sorted((n, state.objects[(b, n)]) for b, n in state.objects if b == bucket)
      entries = []  # (sort key, object or None, prefix or None)
      seen = set()
      for name, (generation, data, updated) in names:
        if not name.startswith(prefix) or name < start or (end and name >= end):
          continue
        rest = name[len(prefix):]
        if delimiter and delimiter in rest:
          sub = prefix + rest.split(delimiter, 1)[0] + delimiter
          if sub not in seen:
            seen.add(sub)
            entries.append((sub, None, sub))
        else:
          entries.append((name, _resource(bucket, name, generation, data, updated), None))
      token = query.get("pageToken", "")
      entries = [e for e in entries if e[0] > token] if token else entries
      size = min(int(query.get("maxResults") or _PAGE), _PAGE)
      page, more = entries[:size], len(entries) > size
      out = {"kind": "storage#objects",
             "items": [e[1] for e in page if e[1] is not None],
             "prefixes": [e[2] for e in page if e[2] is not None]}
      if more:
        out["nextPageToken"] = page[-1][0]
      self._reply(200, out)

    # -------------------------------------------------------------- writes
    def do_POST(self):
      path, query = self._route()
      body = self._body()
      m = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o/?", path)
      if m:
        return self._upload(urllib.parse.unquote(m[1]), query, body)
      m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)/(?:rewriteTo|copyTo)/b/([^/]+)/o/(.+)", path)
      if m:
        return self._copy(*(urllib.parse.unquote(g) for g in m.groups()), query)
      m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)/moveTo/o/(.+)", path)
      if m:
        return self._move(*(urllib.parse.unquote(g) for g in m.groups()), query)
      if path.rstrip("/") == "/batch/storage/v1":
        return self._batch(body)
      self._error(404, f"no such route {path}")

    def _upload(self, bucket, query, body):
      kind = query.get("uploadType", "media")
      if "upload_id" in query:
        return self._chunk(query, body)
      if kind == "media":
        name, data = query.get("name"), body
      elif kind == "multipart":
        boundary = re.search(r'boundary="?([^";]+)"?', self.headers["Content-Type"])[1]
        parts = body.split(b"--" + boundary.encode())
        meta_part, data_part = parts[1], parts[2]
        meta = json.loads(re.split(rb"\r?\n\r?\n", meta_part, maxsplit=1)[1])
        data = re.split(rb"\r?\n\r?\n", data_part, maxsplit=1)[1]
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
        name = meta.get("name") or query.get("name")
      elif kind == "resumable":
        return self._initiate(bucket, query, body)
      else:
        return self._error(400, f"uploadType {kind!r} is not faked")
      if not name:
        return self._error(400, "Required: name")
      status, resource = self._put(bucket, name, data, query)
      if status:
        return self._error(status, "Precondition Failed")
      self._reply(200, resource)

    def _initiate(self, bucket, query, body):
      """A resumable upload's start: its session (an upload_id) keeps the name and the
      preconditions; the chunks come by PUT (do_PUT)."""
      meta = json.loads(body or b"{}")
      name = meta.get("name") or query.get("name")
      with state.lock:
        upload_id = str(len(state.uploads))
        state.uploads[upload_id] = (bucket, name, query, bytearray())
      host = self.headers.get("Host")
      location = (f"http://{host}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o?"
                  f"uploadType=resumable&upload_id={upload_id}")
      self._reply(200, {}, headers=[("Location", location)])

    def do_PUT(self):
      _, query = self._route()
      self._chunk(query, self._body())

    def _chunk(self, query, body):
      """One chunk of a resumable upload (gcsfs POSTs them, others PUT); the last makes
      the object."""
      with state.lock:
        session = state.uploads.get(query.get("upload_id"))
      if session is None:
        return self._error(404, "no such upload")
      bucket, name, start_query, data = session
      data += body
      total = re.search(r"/(\d+|\*)$", self.headers.get("Content-Range", "bytes */*"))
      if total is None or total[1] == "*" or int(total[1]) > len(data):
        return self._reply(308, headers=[("Range", f"bytes=0-{len(data) - 1}")] if data else [])
      status, resource = self._put(bucket, name, bytes(data), start_query)
      if status:
        return self._error(status, "Precondition Failed")
      self._reply(200, resource)

    def _put(self, bucket, name, data, query):
      """(error status or None, the new object's resource), under the preconditions."""
      with state.lock:
        current = state.objects.get((bucket, name))
        status = _precondition(query, current and current[0])
        if status:
          return 412, None
        state.generation += 1
        updated = _now()
        state.objects[(bucket, name)] = (state.generation, bytes(data), updated)
        return None, _resource(bucket, name, state.generation, data, updated)

    def _copy(self, bucket, name, to_bucket, to_name, query):
      with state.lock:
        found = state.objects.get((bucket, name))
      if found is None:
        return self._error(404, f"No such object: {bucket}/{name}")
      status, resource = self._put(to_bucket, to_name, found[1], query)
      if status:
        return self._error(status, "Precondition Failed")
      self._reply(200, {"kind": "storage#rewriteResponse", "done": True,
                        "totalBytesRewritten": resource["size"], "resource": resource})

    def _move(self, bucket, name, to_name, query):
      """GCS's atomic move within a bucket (gcsfs's mv tries it first)."""
      with state.lock:
        found = state.objects.get((bucket, name))
        if found is None:
          return self._error(404, f"No such object: {bucket}/{name}")
        target = state.objects.get((bucket, to_name))
        if _precondition(query, target and target[0]):
          return self._error(412, "Precondition Failed")
        del state.objects[(bucket, name)]
        state.generation += 1
        updated = _now()
        state.objects[(bucket, to_name)] = (state.generation, found[1], updated)
        resource = _resource(bucket, to_name, state.generation, found[1], updated)
      self._reply(200, resource)

    def _delete(self, bucket, name, query):
      """The status of a DELETE."""
      with state.lock:
        found = state.objects.get((bucket, name))
        if found is None or ("generation" in query and int(query["generation"]) != found[0]):
          return 404
        if _precondition(query, found[0]):
          return 412
        del state.objects[(bucket, name)]
        return 204

    def do_DELETE(self):
      path, query = self._route()
      self._body()
      m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", path)
      if not m:
        return self._error(404, f"no such route {path}")
      status = self._delete(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2]), query)
      if status == 204:
        return self._reply(204)
      self._error(status, "Not Found" if status == 404 else "Precondition Failed")

    def _batch(self, body):
      answers = []
      for request in re.findall(rb"DELETE (\S+) HTTP/1\.1", body):
        url = urllib.parse.urlsplit(request.decode())
        m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", url.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        status = self._delete(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2]), query)
        answers.append(f"HTTP/1.1 {status} {'No Content' if status == 204 else 'Error'}\r\n"
                       f"\r\n{'' if status == 204 else json.dumps({'error': {'code': status}})}")
      boundary = "batch_fake_gcs"
      text = "".join(f"--{boundary}\r\nContent-Type: application/http\r\n\r\n{a}\r\n"
                     for a in answers) + f"--{boundary}--\r\n"
      self._reply(200, text.encode(), f"multipart/mixed; boundary={boundary}")

  return Handler


class _HTTPServer(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
      super().handle_error(request, client_address)


class Server:
  """A running fake: its url, the environment that points the clients at it, its state."""

  def __init__(self):
    self._state = _State()
    self._httpd = _HTTPServer(("127.0.0.1", 0), _handler(self._state))
    self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
    self._thread.start()

  @property
  def env(self):
    # STORAGE_EMULATOR_HOST: gcsfs and google-cloud-storage (tensorboardX's
    # writer) send their requests here. gcsfs finds no credentials and goes on
    # anonymously; not token="anon" (FSSPEC_GCS_TOKEN): with it, gcsfs's bucket
    # type lookup calls a gRPC API at this address and retries for minutes.
    # GOOGLE_AUTH_TOKEN_FOR_TESTING: tensorstore (orbax's arrays) sends this
    # bearer token instead of looking for credentials (a metadata server, a key file).
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token"}

  @property
  def objects(self):
    with self._state.lock:
      return {key: (g, data) for key, (g, data, _) in self._state.objects.items()}

  @property
  def requests(self):
    with self._state.lock:
      return list(self._state.requests)

  def clear(self):
    with self._state.lock:
      self._state.objects.clear()
      self._state.requests.clear()

  def stop(self):
    self._httpd.shutdown()
    self._httpd.server_close()


def start():
  return Server()
