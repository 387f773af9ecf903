# Same stack, same start as the README: `make serve` inside the image.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/api-facial-recognition
COPY requirements.txt Makefile ./
RUN make setup
COPY . .
ENV FR_DATA_DIR=/data FR_HOST=0.0.0.0
VOLUME /data
EXPOSE 8080
CMD ["make", "serve", "DATA_DIR=/data"]
