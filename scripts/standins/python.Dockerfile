# A stand-in for python:3.11-slim where no registry can be reached: Debian's Python 3.11 laid out as
# that image has it (python and pip on PATH, pip free to install system-wide).
FROM peergrid-standin/debian:bookworm
ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-pip python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
# It trusts what the host that built it trusts: some networks reach package indexes only through a
# TLS proxy with a certificate authority of its own.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
