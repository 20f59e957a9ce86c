"""A small S3-compatible object store on local disk: the durable storage of the local broker.

tansu's ``s3://`` engine keeps each partition's records as one object per batch and assigns
offsets with a compare-and-swap on a ``watermark.json`` object (``If-Match`` on the ETag), and
creates batch objects with ``If-None-Match: *``. Two properties of the store are therefore what
keeps acknowledged records:

- **conditional writes are honoured**: a ``PUT`` whose ``If-Match``/``If-None-Match`` does not
  hold answers 412 and changes nothing; otherwise two produce requests that read the same
  watermark write the same batch object and one overwrites records already acknowledged;
- **writes are atomic**: an object is written to a temporary file and renamed into place, so a
  client killed mid-upload (the broker under ``kill -9``) leaves the old object or none, never
  a torn one that makes every later fetch of the partition fail.

s3rver (npm), used before, has neither, and a kill -9 of the broker under load lost
acknowledged records through both. This server implements the subset of the S3 REST API that
object_store (tansu's client) uses: path-style ``GET``/``HEAD``/``PUT``/``DELETE`` of objects
(ranges, conditional requests, copy), ``ListObjectsV2`` and multi-object delete. It checks no
signatures: it listens on loopback only and serves the local stack.

Durability is against a crash of any process (the rename is atomic); it does not ``fsync``
unless ``--fsync`` is given, so a power loss can lose the newest objects, as for a
development broker is acceptable (production runs a real Kafka cluster).

Layout: ``<directory>/<bucket>/<key>.obj``. The ``.obj`` suffix keeps a key ``a`` and a key
``a/b`` from colliding (a file and a directory of the same name). The ETag is derived from the
file's inode, modification time and size: every write renames a new file into place, so an
overwritten object always gets a new ETag without reading its bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape, unescape

SUFFIX = ".obj"
TMP_PREFIX = ".tmp-"
MAX_KEYS = 1000
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_DELETE_KEY = re.compile(r"<Key>(.*?)</Key>", re.DOTALL)


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Store:
    """Objects on disk under ``root``; every mutation of one key happens under one lock, so a
    conditional write's check and its rename are one step."""

    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self.sweep_temporaries()

    def sweep_temporaries(self) -> int:
        """Remove temporary files a crash left behind (never visible as objects)."""
        removed = 0
        for path in self.root.rglob(TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    def bucket(self, name: str, *, create: bool = False) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise S3Error(400, "InvalidBucketName", f"invalid bucket name {name!r}")
        path = self.root / name
        if create:
            path.mkdir(exist_ok=True)
        elif not path.is_dir():
            raise S3Error(404, "NoSuchBucket", f"no bucket {name!r}")
        return path

    def object_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts):
            raise S3Error(400, "InvalidArgument", f"unsupported key {key!r}")
        return self.bucket(bucket, create=True).joinpath(*parts[:-1], parts[-1] + SUFFIX)

    @staticmethod
    def etag(st: os.stat_result) -> str:
        return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'

    def stat(self, bucket: str, key: str) -> os.stat_result | None:
        try:
            return self.object_path(bucket, key).stat()
        except FileNotFoundError:
            return None

    def put(
        self, bucket: str, key: str, body: bytes, *, if_match: str | None,
        if_none_match: str | None,
    ) -> os.stat_result:  # fmt: skip
        """Write ``body`` as the object ``key`` when the preconditions hold (412 otherwise)."""
        path = self.object_path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(TMP_PREFIX + uuid.uuid4().hex)
        with open(tmp, "wb") as f:
            f.write(body)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        try:
            with self._lock:
                _check_preconditions(self.stat(bucket, key), if_match, if_none_match)
                os.replace(tmp, path)
                return path.stat()
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def delete(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        with self._lock, contextlib.suppress(FileNotFoundError):
            path.unlink()

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """Every object whose key starts with ``prefix``, in key order (S3's listing order)."""
        base = self.bucket(bucket)
        # Only the directory the prefix names needs walking.
        start = base.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else base
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel = Path(dirpath).relative_to(base).as_posix()
            for name in filenames:
                if not name.endswith(SUFFIX) or name.startswith(TMP_PREFIX):
                    continue
                key = (name if rel == "." else f"{rel}/{name}")[: -len(SUFFIX)]
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((key, os.stat(os.path.join(dirpath, name))))
        found.sort(key=lambda item: item[0])
        yield from found


def _check_preconditions(
    st: os.stat_result | None, if_match: str | None, if_none_match: str | None
) -> None:
    if if_match is not None:
        wanted = {t.strip() for t in if_match.split(",")}
        if st is None or ("*" not in wanted and Store.etag(st) not in wanted):
            raise S3Error(412, "PreconditionFailed", "If-Match does not hold")
    if if_none_match is not None and st is not None:
        wanted = {t.strip() for t in if_none_match.split(",")}
        if "*" in wanted or Store.etag(st) in wanted:
            raise S3Error(412, "PreconditionFailed", "If-None-Match does not hold")


def _http_date(st: os.stat_result) -> str:
    return email.utils.formatdate(st.st_mtime, usegmt=True)


def _iso(st: os.stat_result) -> str:
    return datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a ``Range: bytes=`` header; None for the whole object."""
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first_s, last_s = m.groups()
    if first_s == "":  # suffix range: the last N bytes
        n = int(last_s or 0)
        if n == 0:
            raise S3Error(416, "InvalidRange", "empty suffix range")
        return max(0, size - n), size - 1
    first = int(first_s)
    last = min(int(last_s), size - 1) if last_s else size - 1
    if first >= size or last < first:
        raise S3Error(416, "InvalidRange", f"range {header} outside {size} bytes")
    return first, last


class Handler(BaseHTTPRequestHandler):
    """Path-style S3 requests: ``/<bucket>`` and ``/<bucket>/<key>``."""

    protocol_version = "HTTP/1.1"
    server: StoreServer

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # -- plumbing --

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        url = urlsplit(self.path)
        path = unquote(url.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, parse_qs(url.query, keep_blank_values=True)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:  # the client went away mid-upload: store nothing
            raise S3Error(400, "IncompleteBody", f"got {len(body)} of {length} bytes")
        return body

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
        *, head: bool = False, length: int | None = None,
    ) -> None:  # fmt: skip
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _xml(self, status: int, xml: str) -> None:
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
        self._send(status, body, {"Content-Type": "application/xml"})

    def _error(self, err: S3Error, *, head: bool = False) -> None:
        if head:
            self._send(err.status, head=True)
            return
        self._xml(
            err.status,
            f"<Error><Code>{err.code}</Code><Message>{escape(str(err))}</Message></Error>",
        )

    def _dispatch(self, method: str) -> None:
        head = method == "HEAD"
        try:
            try:
                getattr(self, "_do_" + method.lower())()
            except S3Error as err:
                if method in ("PUT", "POST"):
                    self.close_connection = True  # the body may be unread
                self._error(err, head=head)
        except (BrokenPipeError, ConnectionResetError):  # the client is gone: nobody to answer
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- operations --

    def _do_get(self, *, head: bool = False) -> None:
        bucket, key, query = self._target()
        store = self.server.store
        if not key:
            if head:
                store.bucket(bucket)
                self._send(200, head=True)
            else:
                self._list(bucket, query)
            return
        path = store.object_path(bucket, key)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below; the open file survives a replace)
        except FileNotFoundError:
            raise S3Error(404, "NoSuchKey", f"no key {key!r}") from None
        with f:
            st = os.fstat(f.fileno())
            etag = Store.etag(st)
            headers = {
                "ETag": etag,
                "Last-Modified": _http_date(st),
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
            }
            if_none_match = self.headers.get("If-None-Match")
            if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
                self._send(304, headers={"ETag": etag}, head=True)
                return
            _check_preconditions(st, self.headers.get("If-Match"), None)
            rng = _byte_range(self.headers.get("Range", ""), st.st_size)
            if rng is None:
                status, first, last = 200, 0, st.st_size - 1
            else:
                status, (first, last) = 206, rng
                headers["Content-Range"] = f"bytes {first}-{last}/{st.st_size}"
            n = last - first + 1
            if head:
                self._send(status, headers=headers, head=True, length=n)
                return
            f.seek(first)
            self._send(status, f.read(n), headers)

    def _do_head(self) -> None:
        self._do_get(head=True)

    def _do_put(self) -> None:
        bucket, key, query = self._target()
        store = self.server.store
        if not key:
            self._body()
            store.bucket(bucket, create=True)
            self._send(200)
            return
        if "uploadId" in query or "partNumber" in query:
            raise S3Error(501, "NotImplemented", "multipart uploads are not supported")
        source = self.headers.get("x-amz-copy-source")
        if source is not None:
            self._body()
            src_bucket, _, src_key = unquote(source).lstrip("/").partition("/")
            try:
                body = store.object_path(src_bucket, src_key).read_bytes()
            except FileNotFoundError:
                raise S3Error(404, "NoSuchKey", f"no key {src_key!r}") from None
        else:
            body = self._body()
        st = store.put(
            bucket, key, body,
            if_match=self.headers.get("If-Match"),
            if_none_match=self.headers.get("If-None-Match"),
        )  # fmt: skip
        etag = Store.etag(st)
        if source is not None:
            result = f"<ETag>{escape(etag)}</ETag><LastModified>{_iso(st)}</LastModified>"
            self._xml(200, f"<CopyObjectResult>{result}</CopyObjectResult>")
        else:
            self._send(200, headers={"ETag": etag, "Last-Modified": _http_date(st)})

    def _do_delete(self) -> None:
        bucket, key, _ = self._target()
        if not key:
            raise S3Error(501, "NotImplemented", "deleting buckets is not supported")
        self.server.store.delete(bucket, key)
        self._send(204)

    def _do_post(self) -> None:
        bucket, _, query = self._target()
        body = self._body()
        if "delete" not in query:
            raise S3Error(501, "NotImplemented", "only multi-object delete is supported")
        # <Delete><Object><Key>k</Key></Object>...</Delete>: keys only, no XML parser needed
        # (and none of its entity expansion).
        deleted = []
        for raw in _DELETE_KEY.findall(body.decode("utf-8", "strict")):
            key = unescape(raw, {"&quot;": '"', "&apos;": "'"})
            self.server.store.delete(bucket, key)
            deleted.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        self._xml(200, "<DeleteResult>" + "".join(deleted) + "</DeleteResult>")

    def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
        def arg(name: str) -> str:
            return query.get(name, [""])[0]

        prefix, delimiter = arg("prefix"), arg("delimiter")
        after = arg("continuation-token") or arg("start-after") or arg("marker")
        max_keys = min(int(arg("max-keys") or MAX_KEYS), MAX_KEYS)
        contents: list[str] = []
        prefixes: list[str] = []
        seen_prefixes: set[str] = set()
        last = ""
        truncated = False
        for key, st in self.server.store.keys(bucket, prefix):
            if after and key <= after:
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common in seen_prefixes:
                        continue
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(common)
                    prefixes.append(f"<CommonPrefixes><Prefix>{escape(common)}</Prefix>"
                                    "</CommonPrefixes>")  # fmt: skip
                    # Resume after every key under this common prefix.
                    last = common + "\U0010ffff"
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            contents.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>{_iso(st)}</LastModified>"
                f"<ETag>{escape(Store.etag(st))}</ETag><Size>{st.st_size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = key
        token = f"<NextContinuationToken>{escape(last)}</NextContinuationToken>"
        self._xml(
            200,
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (token if truncated else "")
            + "".join(contents)
            + "".join(prefixes)
            + "</ListBucketResult>",
        )


class StoreServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Store, *, verbose: bool = False) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.verbose = verbose


def serve(directory: Path, host: str, port: int, *, buckets: list[str], fsync: bool) -> None:
    store = Store(directory, fsync=fsync)
    for name in buckets:
        store.bucket(name, create=True)
    server = StoreServer((host, port), store)
    print(f"objectstore: serving {directory} on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=1.0)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.objectstore", description=__doc__)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--fsync", action="store_true", help="fsync every object before it shows")
    args = parser.parse_args(argv)
    try:
        serve(args.directory, args.address, args.port, buckets=args.bucket, fsync=args.fsync)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"objectstore: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["Store", "StoreServer", "main", "serve"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
