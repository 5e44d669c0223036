"""Asks a verger executor's Flight service (mTLS, pyarrow.flight) for a shuffle partition of JOB_ID as ROLE
(the certificate CREDS/ROLE.crt), and prints `served`, `refused: MESSAGE` (the service's own refusal) or
`failed: MESSAGE` (Ballista's answer after the door).

usage: flight_probe.py CREDS ROLE PORT JOB_ID
"""

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def fetch_ticket(job_id):
    """Ballista's `Action { fetch_partition: FetchPartition { job_id, stage_id: 1, partition_id: 0 } }`."""
    fetch = field(1, job_id.encode()) + varint(2 << 3) + varint(1) + varint(3 << 3) + varint(0)
    return field(3, fetch)


def main():
    creds, role, port, job_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    client = flight.FlightClient(
        f"grpc+tls://127.0.0.1:{port}",
        tls_root_certs=(creds / "ca.crt").read_bytes(),
        cert_chain=(creds / f"{role}.crt").read_bytes(),
        private_key=(creds / f"{role}.key").read_bytes(),
        override_hostname="executor.verger.cluster",
    )
    try:
        client.do_get(flight.Ticket(fetch_ticket(job_id))).read_all()
        print("served")
    except (flight.FlightUnauthenticatedError, flight.FlightUnauthorizedError, pa.ArrowInvalid) as e:
        print(f"refused: {e}")
    except (flight.FlightError, pa.ArrowException) as e:
        print(f"failed: {e}")


if __name__ == "__main__":
    main()
