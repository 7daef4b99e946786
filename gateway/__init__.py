"""The endpoint gateway: an SSH server workers tunnel their endpoints to, and the HTTP front that
serves each endpoint's URL through its tunnel."""
