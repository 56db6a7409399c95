"""Kafka unreachable from one client only: a broker with a second listener whose advertised address is a
TCP relay the test can cut and restore, so ingest loses Kafka while the processor keeps it."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from streams.broker.local import LocalKafka, free_port


class Relay:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; :meth:`cut` closes it and every connection
    through it (new ones are refused) until :meth:`restore`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            server.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class TwoDoorKafka(LocalKafka):
    """A local broker with a second listener, ``RELAYED``, advertised at a :class:`Relay`: a client that
    bootstraps at :attr:`relayed_bootstrap` talks to the broker only through the relay."""

    def __init__(self, data_dir: Path, cache_dir: Path, port: int) -> None:
        super().__init__(data_dir, cache_dir, port=port)
        self.relayed_port = free_port()
        self.relay = Relay(self.relayed_port)

    @property
    def relayed_bootstrap(self) -> str:
        return f"127.0.0.1:{self.relay.port}"

    def _write_config(self, controller_port: int | None) -> None:
        super()._write_config(controller_port)
        lines = []
        for line in self.config_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "listeners":
                value += f",RELAYED://127.0.0.1:{self.relayed_port}"
            elif key == "advertised.listeners":
                value += f",RELAYED://127.0.0.1:{self.relay.port}"
            elif key == "listener.security.protocol.map":
                value += ",RELAYED:PLAINTEXT"
            lines.append(f"{key}={value}")
        self.config_file.write_text("\n".join(lines) + "\n")
