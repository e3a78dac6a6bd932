"""Local servers for tests: a throw-away PostgreSQL cluster and a Ray head node.

Each binds to 127.0.0.1 (and a socket in its own temporary directory), lives only as long as the
test's fixture, and is stopped and deleted by it. Tests skip, with the reason, only where the
programs are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), if installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a PostgreSQL cluster on 127.0.0.1; yields its URL; stops and deletes it afterwards.

    PostgreSQL refuses to run as root, so under root (CI) it runs as Debian's ``postgres`` user.
    """
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server programs (initdb, pg_ctl) are not installed: apt-get install postgresql"
        )
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="dip-pg-"))
    data, port = root / "data", free_port()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user is not None else {}
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "dip", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **run_as,
        )
        subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            **run_as,
        )
        yield f"postgresql://dip@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                **run_as,
            )
        shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# Ray turns 127.0.0.1 into the machine's network address unless this is off; with it off, a
# single-node cluster binds to the loopback address only.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextmanager
def ray_head(num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[str]:
    """``ray start --head`` on 127.0.0.1; yields its address; stops the whole node afterwards.

    Ray's workers inherit the head's environment (``env`` added), not the driver's: on a real
    cluster, too, every node needs the same ``DIP_LIGHTNING_ROOT``.

    The head runs with ``--block`` in its own process group, so stopping it ends exactly the
    processes it started (``ray stop`` would end every Ray node of this user on the machine).
    """
    import signal
    import sys

    ray = Path(sys.executable).parent / "ray"
    if not ray.is_file():
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    log = (temp / "head.log").open("w")
    head = subprocess.Popen(
        [
            str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
            f"--temp-dir={temp / 'ray'}", "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {}), **RAY_LOOPBACK_ENV},
        start_new_session=True,
    )  # fmt: skip
    try:
        started = wait_for(
            lambda: "will now block" in (temp / "head.log").read_text() or head.poll() is not None,
            timeout=120,
        )
        if not started or head.poll() is not None:
            raise RuntimeError(f"Ray head did not start:\n{(temp / 'head.log').read_text()[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        for signum, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, signum)
            except ProcessLookupError:
                break
            if wait_for(lambda: not group_alive(head.pid), timeout=grace):
                break
        head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


SLURM_CONF = """ClusterName=dip-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# Bind to 127.0.0.1 (the nodes' address here) instead of every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# No cgroups in a container: track processes by their parent, no task containment, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(cpus: int = 2) -> Iterator[dict[str, str]]:
    """A one-node Slurm cluster (munged, slurmctld, slurmd) on 127.0.0.1; yields the clients' environment.

    slurmd must run as root to start jobs as the submitting user, so this needs root (CI is).
    Each daemon runs in the foreground in its own process group and is stopped with it.
    """
    import signal

    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin"  # the daemons live in /usr/sbin
    programs = {
        name: shutil.which(name, path=search) for name in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
    }
    missing = [name for name, path in programs.items() if path is None]
    if missing:
        pytest.skip(
            f"Slurm programs {missing} are not installed: apt-get install slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        pytest.skip("a one-node Slurm needs root: slurmd starts jobs as the submitting user")
    root = Path(tempfile.mkdtemp(prefix="dip-slurm-"))
    (root / "state").mkdir()
    (root / "spool").mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port(), slurmd_port=free_port(), cpus=cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    commands = [
        [programs["munged"], "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.sock",
         f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed"],
        [programs["slurmctld"], "-D", "-f", str(conf)],
        [programs["slurmd"], "-D", "-f", str(conf), "-N", "localhost"],
    ]  # fmt: skip
    daemons: list[subprocess.Popen] = []
    try:
        for command in commands:
            log = (root / f"{Path(command[0]).name}.out").open("w")
            daemons.append(
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            if command[0] == programs["munged"]:
                wait_for(lambda: (root / "munge.sock").exists(), timeout=30)

        def idle() -> bool:
            state = subprocess.run(
                [programs["sinfo"], "-h", "-o", "%t"], env=env, capture_output=True, text=True
            )
            return state.stdout.strip() == "idle"

        if not wait_for(idle, timeout=60, interval=0.5):
            logs = "\n".join(p.read_text()[-1500:] for p in root.glob("*.log"))
            raise RuntimeError(f"the one-node Slurm cluster did not come up:\n{logs}")
        yield {"SLURM_CONF": str(conf)}
    finally:
        for daemon in reversed(daemons):
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def prior_sweep_command(*overrides: str) -> list[str]:
    """`launch.py -m` of a small random prior-sigma search, the common part of the launcher tests."""
    return [
        sys.executable,
        str(ROOT / "launch.py"),
        "-m",
        "hparams_search=mfvi_prior",
        "hydra/sweeper/sampler=random",
        "preset=small",
        "logger=none",
        "num_threads=1",
        "trainer.check_val_every_n_epoch=1000",
        *overrides,
    ]
