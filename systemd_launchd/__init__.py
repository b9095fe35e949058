"""Service templates: farensed.plist (macOS LaunchAgent) and farensed.service (systemd user unit).

Installed as `farensed.systemd_launchd` (package data); `farensed.queue.service` renders them.
"""
