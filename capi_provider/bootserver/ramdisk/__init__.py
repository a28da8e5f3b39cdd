"""The deploy ramdisk: its sources (init, agent.sh, udhcpc.script) and its build (`build.py`)."""
