"""Where the control sockets live, and the CURVE keys for TCP control endpoints.

The default endpoints are ``ipc://`` sockets in a runtime directory only our user can
enter (0700): ``$RUNTIME_DIRECTORY`` under systemd, else ``$XDG_RUNTIME_DIR/recsync``,
else ``./run``. recsyncd and ``recsync`` find them the same way.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from recsync.errors import RecsyncError

ENDPOINT_ENV = "RECSYNC_ENDPOINT"
EVENT_ENDPOINT_ENV = "RECSYNC_EVENT_ENDPOINT"

COMMAND_SOCKET = "control.sock"
EVENT_SOCKET = "events.sock"


def runtime_dir(env: Mapping[str, str] | None = None, *, create: bool = True) -> Path:
    """The runtime directory (absolute), created 0700 (or tightened to 0700) when ``create``.

    ``create=False`` only computes the path (what a client needs: it must not make folders).
    """
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        path = Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    elif env.get("XDG_RUNTIME_DIR"):
        path = Path(env["XDG_RUNTIME_DIR"]) / "recsync"
    else:
        path = Path("run")
    path = path.absolute()
    if create:
        ensure_private_dir(path, tighten=True)
    return path


def ensure_private_dir(path: Path, *, tighten: bool = False) -> None:
    """Make sure ``path`` is a directory no other user can enter.

    A missing directory is created 0700. An existing one that others can read or enter is
    chmod-ed 0700 when ``tighten`` and it is ours; otherwise that is an error.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise RecsyncError(f"Cannot create the runtime directory {path}: {exc.strerror}.") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RecsyncError(f"The runtime directory {path} exists but is not a directory.")
    if not st.st_mode & 0o077:
        return
    if tighten and st.st_uid == os.getuid():
        os.chmod(path, 0o700)
        return
    raise RecsyncError(
        f"The socket directory {path} is open to other users (mode "
        f"{stat.S_IMODE(st.st_mode):04o}); control sockets must live in a 0700 directory "
        "such as the runtime directory."
    )


def default_endpoints(runtime: Path) -> tuple[str, str]:
    """The (command, event) ``ipc://`` endpoints inside ``runtime``."""
    return f"ipc://{runtime / COMMAND_SOCKET}", f"ipc://{runtime / EVENT_SOCKET}"


def derive_event_endpoint(command_endpoint: str) -> str:
    """The event endpoint that goes with a command endpoint, by convention.

    ``ipc://DIR/control.sock`` -> ``ipc://DIR/events.sock``; ``tcp://HOST:PORT`` ->
    ``tcp://HOST:PORT+1``. Anything else: the same endpoint with an ``-events`` suffix.
    """
    if command_endpoint.startswith("ipc://"):
        path = Path(command_endpoint[len("ipc://") :])
        return f"ipc://{path.with_name(EVENT_SOCKET)}"
    if command_endpoint.startswith("tcp://"):
        host, _, port = command_endpoint.rpartition(":")
        if port.isdigit():
            return f"{host}:{int(port) + 1}"
    return command_endpoint + "-events"


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint, else None."""
    if endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://") :])
    return None


def socket_in_use(path: Path) -> bool:
    """True when a process accepts connections on the unix socket file ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise RecsyncError(f"Cannot check the control socket {path}: {exc.strerror}.") from exc
    finally:
        probe.close()
    return True


def check_endpoint(endpoint: str, *, curve: bool) -> None:
    """Refuse endpoints others could reach: TCP without CURVE, abstract sockets, ipc files
    in a folder open to other users (a missing folder is created 0700), a socket file
    another process listens on. Raises RecsyncError."""
    scheme = endpoint.partition("://")[0]
    if scheme == "tcp":
        if not curve:
            raise RecsyncError(
                f"Refusing the TCP control endpoint {endpoint} without CURVE keys: anyone "
                "who reaches the port could run commands. Give a server key pair and an "
                "allowed-clients folder, or use an ipc:// endpoint."
            )
        return
    if scheme == "inproc":
        return
    if scheme != "ipc":
        raise RecsyncError(
            f"Unsupported control endpoint {endpoint}: use ipc://PATH, or tcp://HOST:PORT "
            "with CURVE keys."
        )
    path = ipc_path(endpoint)
    assert path is not None
    if str(path).startswith("@"):
        raise RecsyncError(
            f"Refusing the abstract socket {endpoint}: any local user could reach it; "
            "use a socket file in the 0700 runtime directory."
        )
    max_len = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
    if len(str(path)) > max_len:
        raise RecsyncError(
            f"The socket path {path} is longer than the {max_len} characters a unix "
            "socket allows; choose a shorter runtime directory."
        )
    ensure_private_dir(path.parent)
    if path.exists() and socket_in_use(path):
        raise RecsyncError(
            f"Another process is already listening on {path}: is recsyncd running already?"
        )


# ---- CURVE --------------------------------------------------------------------------------


def _load(path: Path, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise RecsyncError(
            f"The {what} file {path} does not exist; create a key pair with "
            "zmq.auth.create_certificates(folder, name)."
        )
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise RecsyncError(f"The {what} file {path} is not a ZeroMQ certificate: {exc}.") from exc
    if secret and not secret_key:
        raise RecsyncError(
            f"The {what} file {path} holds no secret key; give the .key_secret file."
        )
    return public, secret_key


@dataclass(frozen=True)
class CurveConfig:
    """Server side of CURVE: the daemon's key pair and the folder of allowed client keys.

    ``secret_key_file`` is a zmq.auth ``.key_secret`` file (it holds both keys); when
    ``public_key_file`` is given too, it must match. ``clients_dir`` holds one public
    ``.key`` file per allowed client; a client with any other key gets no answer.
    """

    secret_key_file: Path
    clients_dir: Path
    public_key_file: Path | None = None

    SECRET_NAME: ClassVar[str] = "server.key_secret"
    PUBLIC_NAME: ClassVar[str] = "server.key"
    CLIENTS_NAME: ClassVar[str] = "authorized_clients"

    @classmethod
    def load(cls, folder: Path) -> CurveConfig:
        """The CURVE set-up in ``folder``: ``server.key_secret`` (``server.key`` checked
        against it when present) and ``authorized_clients/*.key``. Validated now."""
        public = folder / cls.PUBLIC_NAME
        config = cls(
            folder / cls.SECRET_NAME,
            folder / cls.CLIENTS_NAME,
            public if public.exists() else None,
        )
        config.keys()
        return config

    def keys(self) -> tuple[bytes, bytes]:
        """The server's (public, secret) keys; checks that the clients folder is usable."""
        public, secret = _load(self.secret_key_file, "CURVE server secret key", secret=True)
        assert secret is not None
        if self.public_key_file is not None:
            other, _ = _load(self.public_key_file, "CURVE server public key", secret=False)
            if other != public:
                raise RecsyncError(
                    f"The CURVE public key {self.public_key_file} does not belong to the "
                    f"secret key {self.secret_key_file}."
                )
        if not self.clients_dir.is_dir():
            raise RecsyncError(
                f"The CURVE allowed-clients folder {self.clients_dir} does not exist; put one "
                "public .key file per allowed client there."
            )
        if not any(self.clients_dir.glob("*.key")):
            raise RecsyncError(
                f"The CURVE allowed-clients folder {self.clients_dir} has no .key files, so "
                "no client could connect; add one public key per allowed client."
            )
        return public, secret


@dataclass(frozen=True)
class CurveKeys:
    """Client side of CURVE: our key pair and the server's public key (z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, secret_key_file: Path, server_key_file: Path) -> CurveKeys:
        """Load our ``.key_secret`` file and the server's public ``.key`` file."""
        public, secret = _load(secret_key_file, "CURVE client secret key", secret=True)
        server, _ = _load(server_key_file, "CURVE server public key", secret=False)
        assert secret is not None
        return cls(public, secret, server)
