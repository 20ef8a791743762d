# ocserv from Debian (bookworm: ocserv 1.1.6), configured for load tests as in
# protocol.md section 8.  Needs NET_ADMIN and /dev/net/tun (compose.yaml gives both);
# its tun devices and address pool exist only inside the container.
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ocserv iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY docker/ocserv/ocserv.conf docker/ocserv/profile.xml /etc/ocserv/

# The users file: alice:test for a manual check, and the identities that loadgen and
# Locust generate by default (user{n}, password "loadgen"; Locust worker w uses
# n = w * 100000 + 1 ...), 2000 per worker for 8 workers.  One hash computed once.
RUN set -eu; \
    cd /etc/ocserv; \
    echo test | ocpasswd -c ocpasswd alice; \
    echo loadgen | ocpasswd -c seed.passwd seed; \
    hash="$(cut -d: -f3- seed.passwd)"; rm seed.passwd; \
    w=0; while [ "$w" -lt 8 ]; do \
      n=1; while [ "$n" -le 2000 ]; do \
        echo "user$((w * 100000 + n)):*:${hash}"; n=$((n + 1)); \
      done; w=$((w + 1)); \
    done >> ocpasswd; \
    chmod 0600 ocpasswd

# user-profile is a relative name, resolved against the working directory (protocol.md 8).
WORKDIR /etc/ocserv
EXPOSE 443/tcp 443/udp
CMD ["ocserv", "--foreground", "--config", "/etc/ocserv/ocserv.conf"]
