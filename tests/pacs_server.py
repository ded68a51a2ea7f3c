"""A throw-away Orthanc PACS with its DICOMweb plugin, for the tests and benchmarks/bench_pacs.py.

``OrthancServer(tmp_dir).start()`` writes a configuration into ``tmp_dir`` (storage and index there,
loopback only, ``RemoteAccessAllowed`` false, free HTTP and DICOM ports, the DICOMweb plugin at
``/dicom-web/``), runs ``Orthanc config.json`` in the foreground as a child process and waits until it
answers; ``stop()`` terminates it (and kills it if it does not exit). With ``users`` it requires HTTP basic
authentication (``AuthenticationEnabled`` + ``RegisteredUsers``); ``settings`` override configuration entries
(e.g. ``MaximumPatientCount`` with a protected patient: a full PACS that refuses new patients).
No service manager is involved.

The Debian packages ``orthanc`` and ``orthanc-dicomweb`` provide the binary and the plugin (``make orthanc``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """One Orthanc process with its own configuration and storage in ``folder``."""

    def __init__(self, folder: Path, *, users: Mapping[str, str] | None = None,
                 settings: Mapping[str, object] | None = None) -> None:
        assert Path(ORTHANC).exists(), "Orthanc missing: `make orthanc` installs it (Debian package orthanc)"
        assert DICOMWEB_PLUGIN.exists(), "DICOMweb plugin missing: `make orthanc` (Debian package orthanc-dicomweb)"
        self.folder = Path(folder)
        self.users = dict(users or {})
        self.settings = dict(settings or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base}/dicom-web"

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def config(self) -> dict:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        return {
            "Name": "xai-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "HttpBindAddress": "127.0.0.1",  # Orthanc >= 1.10 honours it; RemoteAccessAllowed false anyway
            "DicomServerEnabled": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
            "HttpTimeout": 30,
            "StableAge": 1,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "QueryRetrieveSize": 100,
        } | self.settings

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): "
                                   + (self.folder / "orthanc.log").read_text(errors="replace")[-2000:])
            try:
                if requests.get(f"{self.base}/system", auth=self._auth(), timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def upload(self, data: bytes) -> dict:
        """Store one DICOM file through Orthanc's own REST API (independent of the code under test)."""
        r = requests.post(f"{self.base}/instances", data=data, auth=self._auth(), timeout=30)
        r.raise_for_status()
        return r.json()

    def protect_all_patients(self) -> None:
        """Mark every patient protected: with ``MaximumPatientCount`` reached, Orthanc refuses a new one."""
        for patient in requests.get(f"{self.base}/patients", auth=self._auth(), timeout=30).json():
            requests.put(f"{self.base}/patients/{patient}/protected", data="1", auth=self._auth(),
                         timeout=30).raise_for_status()

    def clear(self) -> None:
        """Delete every study (a clean PACS between tests)."""
        for study in requests.get(f"{self.base}/studies", auth=self._auth(), timeout=30).json():
            requests.delete(f"{self.base}/studies/{study}", auth=self._auth(), timeout=30)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
