"""Choosing the Ray cluster to join (engine.ray_connect) without touching a stale one."""

from __future__ import annotations

import socket

import pytest

from engine import ray_connect


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_without_a_cluster_is_a_clear_error_not_a_wait(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_connect, "STACK_GCS", ("127.0.0.1", _closed_port()))
    with pytest.raises(ray_connect.NoRayCluster, match="RAY_ADDRESS"):
        ray_connect.choose_address(persistent=True)
    assert ray_connect.choose_address() == "local"  # a job gets a private instance instead


def test_ray_address_wins_then_the_stack_head(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_connect.choose_address(persistent=True) == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setattr(ray_connect, "STACK_GCS", ("127.0.0.1", s.getsockname()[1]))
        assert ray_connect.choose_address(persistent=True) == f"127.0.0.1:{s.getsockname()[1]}"


def test_a_listening_port_counts_as_the_stack_head():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert ray_connect._answers("127.0.0.1", s.getsockname()[1])
    assert not ray_connect._answers("127.0.0.1", _closed_port())
