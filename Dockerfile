# Same stack, same start as the README: `make serve` inside the image (one host: broker, workers, fronts).
# docker-compose.yml and deploy/kubernetes/ run the same image as separate broker, web and worker services.
# BASE: any Debian bookworm with Python 3.11; where images cannot be pulled, deploy/docker/base-image.sh makes
# a stand-in (`docker build --build-arg BASE=fr-base:bookworm .`).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
RUN if ! command -v make >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null \
        || ! ldconfig -p | grep -q libGL.so.1; then \
        apt-get update && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 python3-venv \
        && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /srv/api-facial-recognition
COPY requirements.txt requirements-nodeps.txt Makefile ./
RUN make setup && rm -rf /root/.cache
COPY . .
ENV FR_DATA_DIR=/data FR_HOST=0.0.0.0 PATH=/srv/api-facial-recognition/.venv/bin:$PATH
VOLUME /data
EXPOSE 8080 5556 5557
CMD ["make", "serve", "DATA_DIR=/data"]
