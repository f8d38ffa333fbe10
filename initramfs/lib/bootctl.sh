# Boot-control records (format 1) for busybox sh: the initramfs side of
# bay0/formats/bootctl.py. Both must produce the same bytes for the same state;
# tests/test_bootctl_busybox.py checks it. Format: docs/implementation/format-bootctl.md.
#
# Uses only busybox applets: dd head tail tr wc sha256sum awk cmp mkdir sync.
# State lives in shell variables after bc_load:
#   BC_SEQ BC_LAST (A|B|-) BC_COPY (index of the copy loaded or last written)
#   BC_<slot>_<key> for slot A|B and key version root_hash salt data_size
#   hash_offset priority tries good.
# Every function returns non-zero on failure and says why on stderr ("bootctl: ...").
# Values are never evaluated as code: eval only ever names a fixed variable.

BC_KEYS="version root_hash salt data_size hash_offset priority tries good"
BC_KEYFILE_OFFSET=65536
BC_KEYFILE_SIZE=512

bc__err() {
	echo "bootctl: $*" >&2
	return 1
}

bc__tmp() {
	_bc_tmp=${BC_TMP:-/tmp/bootctl}
	mkdir -p "$_bc_tmp" || bc__err "cannot create $_bc_tmp"
}

# Canonical decimal of at most 18 digits (so sh arithmetic never overflows).
bc__is_dec() {
	case $1 in '' | *[!0-9]* | 0?*) return 1 ;; esac
	[ ${#1} -le 18 ]
}

bc__is_hex() {
	case $1 in *[!0-9a-f]*) return 1 ;; esac
	return 0
}

# bc__check_value KEY VALUE: the per-key rules of format 1 (same as Python's).
bc__check_value() {
	case $1 in
	seq | *.data_size | *.hash_offset) bc__is_dec "$2" ;;
	last_boot) case $2 in A | B | -) return 0 ;; *) return 1 ;; esac ;;
	*.priority | *.tries) bc__is_dec "$2" && [ "$2" -le 15 ] ;;
	*.good) case $2 in 0 | 1) return 0 ;; *) return 1 ;; esac ;;
	*.root_hash) [ -z "$2" ] || { [ ${#2} -eq 64 ] && bc__is_hex "$2"; } ;;
	*.salt) [ ${#2} -le 512 ] && [ $((${#2} % 2)) -eq 0 ] && bc__is_hex "$2" ;;
	*.version)
		case $2 in *[!A-Za-z0-9._+~-]*) return 1 ;; esac
		[ ${#2} -le 64 ]
		;;
	*) return 1 ;;
	esac
}

# bc__check_slot S: an empty slot has every field at its default; a full one a
# version, sizes that are multiples of 4096 with hash_offset >= data_size.
bc__check_slot() {
	eval "_v=\$BC_$1_version _r=\$BC_$1_root_hash _s=\$BC_$1_salt _d=\$BC_$1_data_size"
	eval "_h=\$BC_$1_hash_offset _p=\$BC_$1_priority _t=\$BC_$1_tries _g=\$BC_$1_good"
	if [ -z "$_r" ]; then
		[ "$_v$_s" = "" ] && [ "$_d$_h$_p$_t$_g" = "00000" ]
		return
	fi
	[ -n "$_v" ] && [ "$_d" -gt 0 ] && [ $((_d % 4096)) -eq 0 ] &&
		[ "$_h" -ge "$_d" ] && [ $((_h % 4096)) -eq 0 ]
}

# bc__parse FILE: validate one 4096-byte record and load it into BC_* variables.
# Every check is Python's (decode); the file is split once into its first 20 lines
# (.head) and its first 19 (.body), so each check runs one small pipeline on them
# (processes cost ~5 ms each under emulation, and /init parses at every boot).
bc__parse() {
	_f=$1
	[ "$(wc -c <"$_f")" -eq 4096 ] || return 1
	head -n 20 "$_f" >"$_f.head" && head -n 19 "$_f.head" >"$_f.body" || return 1
	_l19=$(wc -c <"$_f.body")
	_l20=$(wc -c <"$_f.head")
	# Line 20 is exactly "sum=" + 64 hex + newline; nothing but the alphabet before it.
	[ $((_l20 - _l19)) -eq 69 ] || return 1
	[ "$(tr -d '\nA-Za-z0-9._+~= -' <"$_f.head" | wc -c)" -eq 0 ] || return 1
	_sum=$(sha256sum <"$_f.body")
	_n=0
	while IFS= read -r _line; do
		_n=$((_n + 1))
		[ $_n -lt 20 ] || break
	done <"$_f.head"
	[ $_n -eq 20 ] && [ "$_line" = "sum=${_sum%% *}" ] || return 1
	[ "$(tail -c $((4096 - _l20)) "$_f" | tr -d '\n' | wc -c)" -eq 0 ] || return 1
	set -- SPINEBC seq last_boot
	for _s in A B; do
		for _k in $BC_KEYS; do set -- "$@" "$_s.$_k"; done
	done
	while IFS= read -r _line; do
		if [ "$1" = SPINEBC ]; then
			[ "$_line" = "SPINEBC 1" ] || return 1
			shift
			continue
		fi
		[ "${_line%%=*}" = "$1" ] || return 1
		_val=${_line#*=}
		bc__check_value "$1" "$_val" || return 1
		case $1 in
		seq) BC_SEQ=$_val ;;
		last_boot) BC_LAST=$_val ;;
		*) eval "BC_${1%%.*}_${1#*.}=\$_val" ;;
		esac
		shift
	done <"$_f.body"
	[ $# -eq 0 ] && bc__check_slot A && bc__check_slot B
}

# bc__stash N / bc__unstash N: keep the values just parsed as copy N's, and load them
# back (no second parse of the copy that wins). Only variable names are evaluated.
bc__stash() {
	eval "_bc$1_SEQ=\$BC_SEQ _bc$1_LAST=\$BC_LAST"
	for _s in A B; do
		for _k in $BC_KEYS; do eval "_bc$1_${_s}_$_k=\$BC_${_s}_$_k"; done
	done
}

bc__unstash() {
	eval "BC_SEQ=\$_bc$1_SEQ BC_LAST=\$_bc$1_LAST"
	for _s in A B; do
		for _k in $BC_KEYS; do eval "BC_${_s}_$_k=\$_bc$1_${_s}_$_k"; done
	done
}

# bc_load DEV: read both copies, keep the valid one with the highest seq (tie: copy 0).
bc_load() {
	bc__tmp || return 1
	_ok0=0 _ok1=0 _seq0=0 _seq1=0
	for _i in 0 1; do
		dd if="$1" of="$_bc_tmp/copy$_i" bs=4096 skip=$_i count=1 2>/dev/null || continue
		if bc__parse "$_bc_tmp/copy$_i"; then
			eval "_ok$_i=1 _seq$_i=\$BC_SEQ"
			bc__stash $_i
		fi
	done
	if [ $_ok1 = 1 ] && { [ $_ok0 = 0 ] || [ "$_seq1" -gt "$_seq0" ]; }; then
		BC_COPY=1
	elif [ $_ok0 = 1 ]; then
		BC_COPY=0
	else
		bc__err "no valid boot-control record on $1"
		return 1
	fi
	bc__unstash $BC_COPY
}

# bc_get SLOT KEY: print one loaded value.
bc_get() {
	bc__slot "$1" || return 1
	case " $BC_KEYS " in *" $2 "*) ;; *) bc__err "unknown key '$2'" || return 1 ;; esac
	eval "printf '%s\n' \"\$BC_$1_$2\""
}

bc__slot() {
	case $1 in A | B) return 0 ;; esac
	bc__err "unknown slot '$1': slots are A and B"
}

# bc__bootable S: priority > 0 and (good or tries left).
bc__bootable() {
	eval "_p=\$BC_$1_priority _t=\$BC_$1_tries _g=\$BC_$1_good"
	[ "$_p" -gt 0 ] && { [ "$_g" = 1 ] || [ "$_t" -gt 0 ]; }
}

# bc_choose: print the boot order on one line (highest priority first, tie: A).
bc_choose() {
	_order=""
	if bc__bootable A; then _order=A; fi
	if bc__bootable B; then
		if [ -n "$_order" ] && [ "$BC_B_priority" -gt "$BC_A_priority" ]; then
			_order="B A"
		else
			_order="${_order:+$_order }B"
		fi
	fi
	echo "$_order"
}

# bc_consume_try SLOT: one try fewer, good or not, never below 0; last_boot = SLOT
# (in memory). A good slot's tries count the boots since bay0 last confirmed it.
bc_consume_try() {
	bc__slot "$1" || return 1
	bc__bootable "$1" || bc__err "slot $1 is not bootable" || return 1
	eval "_t=\$BC_$1_tries"
	[ "$_t" -eq 0 ] || eval "BC_$1_tries=\$((_t - 1))"
	BC_LAST=$1
}

# bc_last_chance SLOT: true when SLOT has no try left (after bc_consume_try): read it
# end to end before using it (Python: last_chance).
bc_last_chance() {
	bc__slot "$1" || return 1
	eval "[ \"\$BC_$1_tries\" -eq 0 ]"
}

# bc_mark_bad SLOT: priority 0, tries 0, not good (in memory; the image is kept).
bc_mark_bad() {
	bc__slot "$1" || return 1
	eval "_r=\$BC_$1_root_hash"
	[ -n "$_r" ] || bc__err "cannot mark slot $1 bad: it is empty" || return 1
	eval "BC_$1_priority=0 BC_$1_tries=0 BC_$1_good=0"
}

# bc__encode FILE: write the in-memory state as a record with seq BC_SEQ.
bc__encode() {
	{
		printf 'SPINEBC 1\nseq=%s\nlast_boot=%s\n' "$BC_SEQ" "$BC_LAST"
		for _s in A B; do
			for _k in $BC_KEYS; do
				eval "printf '%s.%s=%s\n' $_s $_k \"\$BC_${_s}_$_k\""
			done
		done
	} >"$1.new" || return 1
	_sum=$(sha256sum <"$1.new") || return 1
	printf 'sum=%s\n' "${_sum%% *}" >>"$1.new"
	_len=$(wc -c <"$1.new")
	awk -v n=$((4096 - _len)) 'BEGIN { while (n-- > 0) printf "\n" }' >>"$1.new"
	mv "$1.new" "$1"
}

# bc_save DEV: write the state, seq + 1, over the copy not loaded; fsync; read back.
bc_save() {
	bc__tmp || return 1
	[ -n "$BC_COPY" ] || bc__err "bc_save before bc_load" || return 1
	_target=$((1 - BC_COPY))
	_oldseq=$BC_SEQ
	BC_SEQ=$((BC_SEQ + 1))
	_rec="$_bc_tmp/write"
	# Re-parse what we are about to write: never put a record on disk a reader rejects.
	if ! bc__encode "$_rec" || ! bc__parse "$_rec"; then
		BC_SEQ=$_oldseq
		bc__err "refusing to write an invalid boot-control record"
		return 1
	fi
	dd if="$_rec" of="$1" bs=4096 seek=$_target count=1 conv=notrunc,fsync 2>/dev/null &&
		sync &&
		dd if="$1" of="$_rec.back" bs=4096 skip=$_target count=1 2>/dev/null &&
		cmp -s "$_rec" "$_rec.back" || {
		BC_SEQ=$_oldseq
		bc__err "writing boot-control copy $_target on $1 failed"
		return 1
	}
	BC_COPY=$_target
}

# bc_keyfile DEV OUT: copy the v0.1 persist keyfile out of spine_state (mode 0600).
bc_keyfile() {
	(umask 077 && dd if="$1" of="$2" bs=$BC_KEYFILE_SIZE \
		skip=$((BC_KEYFILE_OFFSET / BC_KEYFILE_SIZE)) count=1 2>/dev/null) &&
		[ "$(wc -c <"$2")" -eq $BC_KEYFILE_SIZE ] &&
		[ "$(tr -d '\000' <"$2" | wc -c)" -gt 0 ] || {
		bc__err "no persist keyfile in $1"
		return 1
	}
}
