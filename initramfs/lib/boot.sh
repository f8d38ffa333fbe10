# Helpers of the initramfs /init (busybox sh). Sourced by /init; the host tests
# source it too, with SPINE_SYSFS and PATH pointing at fakes.
#
# Every step prints one console line "spine-init: ...". Nothing here ever starts a
# shell or waits for input: failures return non-zero and /init decides.

SPINE_SYSFS=${SPINE_SYSFS:-/sys}
SPINE_DEV=${SPINE_DEV:-/dev}
SPINE_ROOT_DM=spine_root
SPINE_PERSIST_DM=persist
PERSIST_LABEL=spine-persist
PERSIST_NEW=spine-persist-new

# say MESSAGE: one console line. With spine.debug=1 on the command line /init sets
# SPINE_TIMES=1 and each line ends with the uptime, for boot-time measurements.
say() {
	if [ "${SPINE_TIMES:-0}" = 1 ]; then
		echo "spine-init: $* (t=$(cut -d' ' -f1 /proc/uptime))"
	else
		echo "spine-init: $*"
	fi
}

# find_part NAME [DISK]: print /dev/<node> of the partition whose GPT name is NAME
# (on DISK when given, e.g. "vda"). Fails when none or several match. The uevent
# files are read with the shell's own `read` (no process per file: each costs ~5 ms
# under emulation, and there is one file per block device).
find_part() {
	_found=""
	for _ue in "$SPINE_SYSFS"/class/block/*/uevent; do
		[ -r "$_ue" ] || continue
		_pname="" _node=""
		while IFS= read -r _line || [ -n "$_line" ]; do
			case $_line in
			PARTNAME=*) _pname=${_line#PARTNAME=} ;;
			DEVNAME=*) _node=${_line#DEVNAME=} ;;
			esac
		done <"$_ue"
		[ "$_pname" = "$1" ] || continue
		if [ -n "$2" ] && [ "$(part_disk "$_node")" != "$2" ]; then
			continue
		fi
		[ -z "$_found" ] || { say "partition $1 found twice ($_found, $_node)" >&2; return 1; }
		_found=$_node
	done
	[ -n "$_found" ] || return 1
	echo "$SPINE_DEV/$_found"
}

# part_disk NODE: the disk a partition belongs to (vda2 -> vda), from sysfs.
part_disk() {
	_link=$(readlink -f "$SPINE_SYSFS/class/block/$1") || return 1
	_link=${_link%/*}
	echo "${_link##*/}"
}

# wait_part NAME [DISK] [TENTHS]: find_part, polling while the disk is probed.
wait_part() {
	_n=${3:-30}
	while [ "$_n" -gt 0 ]; do
		find_part "$1" "$2" 2>/dev/null && return 0
		sleep 0.1
		_n=$((_n - 1))
	done
	find_part "$1" "$2"
}

# load_modules LIST: load each module of LIST (in-image paths, dependency order).
# One busybox modprobe for all (each process start costs ~25 ms under emulation);
# if it fails, insmod one by one so the console names what did not load. A failure
# is logged, not fatal: what it breaks fails later, loudly, at the step that needs it.
load_modules() {
	_names=$(sed 's|.*/||; s|\.ko$||' "$1" | tr '\n' ' ')
	if modprobe -a $_names 2>/dev/null; then
		say "loaded $(echo $_names | wc -w) modules"
		return 0
	fi
	_ok=0 _bad=""
	while IFS= read -r _m; do
		[ -n "$_m" ] || continue
		_n=${_m##*/}
		_n=${_n%.ko}
		if [ -d "/sys/module/$(echo "$_n" | tr - _)" ] || insmod "$_m" 2>/dev/null; then
			_ok=$((_ok + 1))
		else
			_bad="$_bad $_n"
		fi
	done <"$1"
	say "loaded $_ok modules${_bad:+; failed:$_bad}"
}

# verity_args SLOT: the veritysetup options for SLOT from the loaded boot-control
# record. The record is the trust anchor, so the on-disk superblock is ignored
# (--no-superblock): with it veritysetup would take salt and sizes from the disk.
verity_args() {
	eval "_d=\$BC_$1_data_size _h=\$BC_$1_hash_offset _s=\$BC_$1_salt"
	[ -n "$_s" ] || _s=- # veritysetup's spelling of "no salt"
	echo "--no-superblock --format=1 --hash=sha256 --data-block-size=4096" \
		"--hash-block-size=4096 --data-blocks=$((_d / 4096))" \
		"--hash-offset=$((_h + 4096)) --salt=$_s"
}

# verity_open DEV SLOT [EXTRA...]: map DEV as /dev/mapper/$SPINE_ROOT_DM.
verity_open() {
	_dev=$1 _slot=$2
	shift 2
	eval "_r=\$BC_${_slot}_root_hash"
	# shellcheck disable=SC2046 # verity_args is a fixed list of words
	veritysetup open "$_dev" "$SPINE_ROOT_DM" "$_dev" "$_r" $(verity_args "$_slot") "$@"
}

verity_read_all() {
	dd if="$SPINE_DEV/mapper/$SPINE_ROOT_DM" of=/dev/null bs=1M iflag=direct 2>/dev/null
}

verity_close() {
	veritysetup close "$SPINE_ROOT_DM" 2>/dev/null
}

# verity_check_all DEV SLOT: read every block through dm-verity (no restart flag:
# corruption shows up as a read error here, in the initramfs, instead of a reboot).
# A failed read is retried once: corruption fails again, a transient I/O error may not.
# O_DIRECT in 1 MiB reads: dm-verity still hashes every block, but nothing is copied
# through the page cache (that mapping is closed next anyway); 0.44 s instead of 0.75 s
# for a 30 MiB Spine under TCG.
verity_check_all() {
	verity_open "$1" "$2" || return 1
	if ! verity_read_all && ! verity_read_all; then
		verity_close
		return 1
	fi
	verity_close
}

# prefetch ROOT: read the files ROOT/etc/spine/prefetch lists (the interpreter bay0
# runs on, its libraries, the modules it imports before READY; written by the
# pipeline, one root-relative path per line) into the page cache. A hint only: the
# reads go through dm-verity like any other, and a missing list or file is skipped.
prefetch() {
	[ -r "$1/etc/spine/prefetch" ] || return 0
	(
		cd "$1" || exit 0
		set -f
		_files="" _n=0
		while IFS= read -r _p; do
			case $_p in "" | /* | ../* | */../* | *[!A-Za-z0-9._+/-]*) continue ;; esac
			_files="$_files $_p"
			_n=$((_n + 1))
		done <etc/spine/prefetch
		[ -z "$_files" ] || cat $_files >/dev/null 2>&1
		say "prefetch: $_n files read ahead"
	)
	return 0
}

# is_blank DEV BYTES: true when the first BYTES of DEV are all zero.
is_blank() {
	[ "$(dd if="$1" bs="$2" count=1 2>/dev/null | tr -d '\000' | wc -c)" -eq 0 ]
}

# The magics as raw bytes (no NUL in either), compared with one dd's output: one
# process per probe instead of a dd | od | tr pipeline.
EXT4_MAGIC=$(printf 'S\357')
LUKS_MAGIC=$(printf 'LUKS\272\276')

# has_ext4 DEV: the ext2/3/4 superblock magic 0xEF53 (little endian) at byte 1080.
has_ext4() {
	[ "$(dd if="$1" bs=2 skip=540 count=1 2>/dev/null)" = "$EXT4_MAGIC" ]
}

# is_luks DEV: the LUKS magic at byte 0 (cheaper than starting cryptsetup isLuks).
is_luks() {
	[ "$(dd if="$1" bs=6 count=1 2>/dev/null)" = "$LUKS_MAGIC" ]
}

# luks_label DEV: the label of a LUKS2 volume, from its binary header (48 bytes at 24).
luks_label() {
	dd if="$1" bs=1 skip=24 count=48 2>/dev/null | tr -d '\000'
}

# The hardware watchdog is armed by /init, before anything that can hang, and handed
# to bay0 still counting: a wedged /init (a stuck disk, a kernel stall) or a bay0 that
# never gets as far as opening the device is reset like a wedged bay0, and the reset
# costs the slot the try it spent. busybox's watchdog, started with a ping interval
# longer than its timeout, sets the timeout and pings once; it is then stopped in one
# of two ways: SIGKILL at the handover (the device closes without the magic "V", so
# it keeps counting and the kernel logs "watchdog did not stop!" until bay0 opens it
# and sets its own timeout), or SIGTERM before a power off (busybox writes "V" and
# disables it: a machine told to stay off must not be reset into the same failure).
WATCHDOG_JOB=

# watchdog_modules LIST: the names of LIST's watchdog drivers (drivers/watchdog/).
watchdog_modules() {
	sed -n 's|.*/drivers/watchdog/\([^/]*\)\.ko$|\1|p' "$1" | tr '\n' ' '
}

# arm_watchdog SECONDS: start the first watchdog device with a SECONDS timeout.
arm_watchdog() {
	for _wd in "$SPINE_DEV/watchdog0" "$SPINE_DEV/watchdog"; do
		[ -c "$_wd" ] || continue
		watchdog -F -T "$1" -t $(($1 * 2)) "$_wd" </dev/null &
		WATCHDOG_JOB=$!
		say "watchdog armed: ${_wd#"$SPINE_DEV"/} resets the machine in $1 s unless bay0 takes it over"
		return 0
	done
	say "watchdog: no device"
	return 1
}

# watchdog_release KILL|TERM: end the busybox job. KILL hands the watchdog over still
# counting (for bay0); TERM disarms it (before a power off).
watchdog_release() {
	[ -n "$WATCHDOG_JOB" ] || return 0
	kill "-$1" "$WATCHDOG_JOB" 2>/dev/null
	wait "$WATCHDOG_JOB" 2>/dev/null
	WATCHDOG_JOB=
}
