"""Trust validation throughput: cold (a chain never seen) and warm (an already-seen chain), per second.

Usage: ``python3 bench/trust.py [--seconds 1.0]``. Prints validations per second and microseconds per
validation for :func:`hisp.core.trust.validate` (revocation off: the cached path) and for
:func:`hisp.core.trust.validate_path`, and the ratio of a warm validation to one RSA-2048 private
operation (cryptography, PKCS#1 v1.5 SHA-256 sign). Target (printed, not asserted): warm under 50 us,
far below one RSA private operation. Exit status 0 whenever the measurements ran.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hisp.core import trust
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import DEFAULT_POLICY, Direction, RevocationMode

AT = datetime.now(UTC)


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work`` over about ``seconds``."""
    work()
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            work()
        count += 50
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--cold", type=int, default=30, help="distinct chains for the cold figure")
    args = parser.parse_args()

    root = create_ca("Bench Root", at=AT)
    inter = create_ca("Bench Intermediate", at=AT, issuer=root)
    leaves: list[Issued] = [
        issue_certificate(inter, at=AT, address=f"u{i}@direct.bench.example") for i in range(args.cold)
    ]
    store = trust.TrustStore(incoming=(trust.TrustAnchor(root.certificate, "root.pem"),), revocation=RevocationMode.OFF)
    leaf = leaves[0].certificate

    def warm() -> object:
        return trust.validate(leaf, store=store, direction=Direction.INCOMING, intermediates=[inter.certificate], at=AT)

    def warm_path() -> object:
        return trust.validate_path(
            leaf, anchors=[root.certificate], intermediates=[inter.certificate], at=AT, policy=DEFAULT_POLICY
        )

    # cold: every validation a chain the path cache has not seen
    trust._PATHS.clear()
    started = time.perf_counter()
    for issued in leaves:
        trust.validate(
            issued.certificate, store=store, direction=Direction.INCOMING, intermediates=[inter.certificate], at=AT
        )
    cold_rate = len(leaves) / (time.perf_counter() - started)

    warm_rate = rate(warm, args.seconds)
    path_rate = rate(warm_path, args.seconds)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_rate = rate(lambda: key.sign(b"x" * 32, padding.PKCS1v15(), hashes.SHA256()), args.seconds)

    print(f"{'measurement':<40} {'per s':>10} {'us each':>10}")
    for name, value in (
        ("validate, cold (new chain)", cold_rate),
        ("validate, warm (seen chain)", warm_rate),
        ("validate_path, warm", path_rate),
        ("RSA-2048 private op (sign)", rsa_rate),
    ):
        print(f"{name:<40} {value:>10.0f} {1e6 / value:>10.1f}")
    warm_us = 1e6 / warm_rate
    print(f"warm validation / RSA-2048 private op: {rsa_rate / warm_rate:.3f}")
    print(f"cold / warm: {warm_rate / cold_rate:.1f}x")
    print(f"target warm < 50 us: {'PASS' if warm_us < 50 else 'MISS'} ({warm_us:.1f} us)")


if __name__ == "__main__":
    main()
