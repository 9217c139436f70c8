"""Where the shipped deployment files are, and the compose file's gateway services."""

from __future__ import annotations

from pathlib import Path

__all__ = ["COMPOSE", "DEPLOY", "GATEWAYS", "HAPROXY_CFG", "K8S", "NGINX_CONF", "NGINX_DIR", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout
DEPLOY = ROOT / "deploy"
NGINX_DIR = DEPLOY / "nginx"
NGINX_CONF = NGINX_DIR / "nginx.conf"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
GATEWAYS = ("gateway1", "gateway2", "gateway3")
