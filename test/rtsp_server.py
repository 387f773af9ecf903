"""GStreamer's RTSP server serving an MJPEG AVI clip at its own pace at rtsp://127.0.0.1:<port>/cam, for the tests.

Runs in Debian's Python (python3-gi, gir1.2-gst-rtsp-server-1.0), not the project's venv:
    /usr/bin/python3 test/rtsp_server.py clip.avi PORT [user:password]
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # the clip's frames, paced as a live camera would send them
    # (decoded and encoded again by GStreamer's jpegenc: rtpjpegpay garbled OpenCV's JPEGs, RFC 2435 takes
    # only some JPEG layouts)
    factory.set_launch(f'( filesrc location="{clip}" ! avidemux ! queue ! jpegdec ! videoconvert ! '
                       'video/x-raw,format=I420 ! jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26 )')
    factory.set_shared(True)
    if len(sys.argv) > 3:
        user, password = sys.argv[3].split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        factory.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print(f"serving {clip} at rtsp://127.0.0.1:{port}/cam", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
