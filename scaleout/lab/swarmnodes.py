"""More Swarm nodes on one machine: Docker engines in containers, joined to this engine's swarm as workers.

The way kind runs Kubernetes nodes: each node is a container running Debian's `dockerd`
(docker/standins/swarm-node.Dockerfile) with only the capabilities it needs (`--privileged` is refused on
this kind of machine: one capability is withheld), and its own volume for images (overlay2 on the host's
disk; vfs made image roots that only root could enter).
It joins with the swarm's worker token over the engine's bridge, and gets the images its tasks run
(`docker save | docker load`: no registry is needed). Overlay networks span the nodes over VXLAN.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable

from scaleout.lab.engine import STANDINS, ComposeError, _image_exists, build_base, docker, run

NODE_IMAGE = "scaleout/swarm-node:bookworm"
# What a node engine needs and no more: mounts and cgroups (SYS_ADMIN), its own bridge and iptables
# (NET_ADMIN), entering its containers' namespaces for their health checks, which run as another uid
# (SYS_PTRACE: without it every check fails with "error executing setns process" and the Swarm replaces
# the task for ever); the default seccomp/AppArmor profiles and masked /proc paths would stop it too.
NODE_FLAGS = [
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "-v",
    "/var/lib/docker",  # an anonymous volume (removed with the node): images on the host's disk, not a layer
]


def node_image(say: Callable[[str], None] = print) -> str:
    if not _image_exists(NODE_IMAGE):
        build_base(say)
        say(f"building {NODE_IMAGE} (Debian's docker.io, once)")
        with tempfile.TemporaryDirectory() as ctx:
            run(
                [docker(), "build", "-q", "-t", NODE_IMAGE, "-f", str(STANDINS / "swarm-node.Dockerfile"), ctx],
                timeout=900,
            )
    return NODE_IMAGE


def node_docker(node: str) -> list[str]:
    return [docker(), "exec", node, "docker"]


def node_running(node: str) -> bool:
    return run([docker(), "inspect", "-f", "{{.State.Running}}", node], check=False).strip() == "true"


def add_node(node: str, manager: str, token: str, say: Callable[[str], None] = print) -> None:
    """Start the node container `node` (also its hostname, so its swarm node name) and join it as a worker."""
    run([docker(), "rm", "-f", "-v", node], check=False)
    run([docker(), "run", "-d", "--name", node, "--hostname", node, *NODE_FLAGS, node_image(say)])
    deadline = time.monotonic() + 60
    while run([*node_docker(node), "info", "--format", "{{.ID}}"], check=False).strip() == "":
        if time.monotonic() > deadline:
            logs = run([docker(), "logs", "--tail", "20", node], check=False)
            raise ComposeError(f"the engine in {node} did not come up within 60 s: {logs}")
        time.sleep(0.5)
    # A node of that name that died before is still on the manager's list (down): its place is taken anew.
    run([docker(), "node", "rm", "--force", node], check=False)
    run([*node_docker(node), "swarm", "join", "--token", token, f"{manager}:2377"], timeout=120)
    deadline = time.monotonic() + 60
    while run([docker(), "node", "inspect", "-f", "{{.Status.State}}", node], check=False).strip() != "ready":
        if time.monotonic() > deadline:
            raise ComposeError(f"{node} joined but is not ready within 60 s")
        time.sleep(0.5)


def load_images(node: str, images: list[str], say: Callable[[str], None] = print) -> None:
    """The images the node's tasks run, as this engine has them now (only those that differ are sent)."""
    for image in images:
        mine = run([docker(), "image", "inspect", "-f", "{{.Id}}", image]).strip()
        theirs = run([*node_docker(node), "image", "inspect", "-f", "{{.Id}}", image], check=False).strip()
        if mine == theirs:
            continue
        say(f"loading {image} into {node}")
        save = subprocess.Popen([docker(), "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(
            [docker(), "exec", "-i", node, "docker", "load", "-q"], stdin=save.stdout, capture_output=True, timeout=600
        )
        save.wait()
        if load.returncode != 0 or save.returncode != 0:
            raise ComposeError(f"could not load {image} into {node}: {load.stderr.decode(errors='replace')[-500:]}")


def remove_nodes(nodes: list[str]) -> None:
    """Each node leaves the swarm, is removed from the manager's list, and its container and volume go."""
    for node in nodes:
        run([*node_docker(node), "swarm", "leave", "--force"], check=False, timeout=60)
        run([docker(), "rm", "-f", "-v", node], check=False, timeout=120)
        run([docker(), "node", "rm", "--force", node], check=False)
