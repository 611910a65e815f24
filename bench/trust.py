"""Trust validation throughput: cold (a chain never seen) and warm (an already-seen chain), per second.

Usage: ``python3 bench/trust.py [--seconds 1.0] [--cold 30]``. Prints validations per second and
microseconds per validation of :func:`hisp.core.trust.validate` with revocation off, and soft and hard
against a real HTTP server on loopback (:mod:`hisp.testing.http`) serving a CRL (leaves with a CRL
distribution point) and OCSP responses (leaves with an OCSP responder), through
:class:`hisp.adapters.revocation.BoundedFetcherBackend`; then :func:`hisp.core.trust.validate_path` and
one RSA-2048 private operation (cryptography, PKCS#1 v1.5 SHA-256 sign) for scale.

* **cold**: each validation is of a chain never validated before (the verdict and path caches are
  cleared first); the fetcher's caches are warm for the shared CRL (fetched once before timing), but each
  leaf's OCSP answer is one loopback POST. This is the first message from or to a new peer.
* **warm**: the same chain again and again, the validation time moving on by 1 ms per call as the clock
  does between messages: the verdict cache, with the fetcher's CRL and OCSP answers still fresh. This is
  every later message.

Target (printed, not asserted): warm under 50 us in every mode, far below one RSA private operation.
Exit status 0 whenever the measurements ran.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.core import trust
from hisp.core.certs import Certificate
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import DEFAULT_POLICY, Direction, RevocationMode
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.revocation import build_crl, build_ocsp_response

AT = datetime.now(UTC).replace(microsecond=0)
_OCSP = {"Content-Type": "application/ocsp-response"}


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work`` over about ``seconds`` (after one untimed call)."""
    work()
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            work()
        count += 50
    return count / elapsed


def clear_caches() -> None:
    """Forget every remembered path and verdict (not the fetcher's CRLs and OCSP answers)."""
    trust._PATHS.clear()
    verdicts = getattr(trust, "_VERDICTS", None)  # absent before the verdict cache existed
    if verdicts is not None:
        verdicts.clear()


@contextmanager
def pki(count: int) -> Iterator[tuple[LoopbackHTTPServer, Issued, Issued, dict[str, list[Certificate]]]]:
    """A root, an intermediate, and ``count`` leaves of each kind (no source, CRL, OCSP), served on loopback."""
    with serve_http() as server:
        root = create_ca("Bench Root", at=AT)
        inter = create_ca("Bench Intermediate", at=AT, issuer=root)
        leaves: dict[str, list[Certificate]] = {"off": [], "crl": [], "ocsp": []}
        for i in range(count):
            leaves["off"].append(issue_certificate(inter, at=AT, address=f"u{i}@direct.bench.example").certificate)
            leaves["crl"].append(
                issue_certificate(
                    inter, at=AT, address=f"c{i}@direct.bench.example", crl_url=server.url("/inter.crl")
                ).certificate
            )
            leaf = issue_certificate(
                inter, at=AT, address=f"o{i}@direct.bench.example", ocsp_url=server.url(f"/ocsp/{i}")
            ).certificate
            leaves["ocsp"].append(leaf)
            server.set_route(f"/ocsp/{i}", body=build_ocsp_response(leaf, inter, at=AT), headers=_OCSP)
        server.set_route("/inter.crl", body=build_crl(inter, at=AT, next_update=timedelta(days=1)))
        yield server, root, inter, leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per warm measurement")
    parser.add_argument("--cold", type=int, default=30, help="distinct chains for each cold figure")
    args = parser.parse_args()

    rows: list[tuple[str, float]] = []
    warm_us: dict[str, float] = {}
    with pki(args.cold) as (_server, root, inter, leaves):
        backend = BoundedFetcherBackend(timeout=2)
        cases = [
            ("off", RevocationMode.OFF, "off"),
            ("soft, CRL", RevocationMode.SOFT, "crl"),
            ("hard, CRL", RevocationMode.HARD, "crl"),
            ("soft, OCSP", RevocationMode.SOFT, "ocsp"),
            ("hard, OCSP", RevocationMode.HARD, "ocsp"),
        ]
        for label, mode, kind in cases:
            store = trust.TrustStore(incoming=(trust.TrustAnchor(root.certificate, "root.pem"),), revocation=mode)

            def one(leaf: Certificate, store: trust.TrustStore = store, at: datetime = AT) -> object:
                return trust.validate(
                    leaf,
                    store=store,
                    direction=Direction.INCOMING,
                    intermediates=[inter.certificate],
                    at=at,
                    revocation=backend,
                )

            chains = leaves[kind]
            verdict = one(chains[0])  # fetches the shared CRL once (not timed), and checks the setup
            assert isinstance(verdict, trust.TrustVerdict) and verdict.trusted, verdict
            backend._ocsp.clear()  # each leaf's OCSP answer is part of its cold validation
            clear_caches()
            started = time.perf_counter()
            for leaf in chains:
                one(leaf)
            cold = len(chains) / (time.perf_counter() - started)
            ticks = itertools.count(500)

            def again(leaf: Certificate = chains[0], ticks: Iterator[int] = ticks) -> object:
                return one(leaf, at=AT + timedelta(milliseconds=next(ticks)))

            warm = rate(again, args.seconds)
            rows += [(f"validate {label}, cold (new chain)", cold), (f"validate {label}, warm (seen chain)", warm)]
            warm_us[label] = 1e6 / warm

    leaf = leaves["off"][0]
    path_rate = rate(
        lambda: trust.validate_path(
            leaf, anchors=[root.certificate], intermediates=[inter.certificate], at=AT, policy=DEFAULT_POLICY
        ),
        args.seconds,
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_rate = rate(lambda: key.sign(b"x" * 32, padding.PKCS1v15(), hashes.SHA256()), args.seconds)
    rows += [("validate_path, warm (revocation off)", path_rate), ("RSA-2048 private op (sign)", rsa_rate)]

    print(f"{'measurement':<44} {'per s':>10} {'us each':>10}")
    for name, value in rows:
        print(f"{name:<44} {value:>10.0f} {1e6 / value:>10.1f}")
    rsa_us = 1e6 / rsa_rate
    for label, micros in warm_us.items():
        verdict = "PASS" if micros < 50 else "MISS"
        print(f"target warm < 50 us, {label:<10}: {verdict} ({micros:.1f} us, {micros / rsa_us:.3f} RSA private ops)")


if __name__ == "__main__":
    main()
