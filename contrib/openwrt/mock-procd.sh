# shellcheck shell=dash
# A stand-in for OpenWrt's /lib/functions.sh and /lib/functions/procd.sh,
# enough to run files/echod.init's start_service and service_triggers on a
# Debian host (sourced by test.sh; POSIX sh). procd calls are printed, one
# line per call and one indented line per argument, for test.sh to read.
# config_load reads a UCI file from $UCI_CONFIG_DIR: UCI's file format is
# shell syntax, so `config`, `option` and `list` are functions here.

CONFIG_SECTIONS=""
CONFIG_SECTION=""

config() {
	CONFIG_SECTION="$2"
	CONFIG_SECTIONS="$CONFIG_SECTIONS $2"
	eval "CONFIG_${2}_TYPE=\$1"
}
option() {
	eval "CONFIG_${CONFIG_SECTION}_$1=\$2"
}
list() {
	local old
	eval "old=\${CONFIG_${CONFIG_SECTION}_$1:-}"
	if [ -n "$old" ]; then
		eval "CONFIG_${CONFIG_SECTION}_$1=\"\$old
\$2\""
	else
		eval "CONFIG_${CONFIG_SECTION}_$1=\$2"
	fi
}
config_load() {
	CONFIG_SECTIONS=""
	# shellcheck source=/dev/null
	. "$UCI_CONFIG_DIR/$1"
}
# Locals have odd names: the caller's variable name is assigned through eval.
config_get() {
	local __cg_value
	eval "__cg_value=\${CONFIG_${2}_$3:-}"
	[ -n "$__cg_value" ] || __cg_value="${4:-}"
	eval "$1=\$__cg_value"
}
config_get_bool() {
	local __cgb_value
	config_get __cgb_value "$2" "$3" "${4:-0}"
	case "$__cgb_value" in
	1 | on | true | yes | enabled) __cgb_value=1 ;;
	*) __cgb_value=0 ;;
	esac
	eval "$1=\$__cgb_value"
}
config_foreach() {
	local fn="$1" type="$2" section stype
	for section in $CONFIG_SECTIONS; do
		eval "stype=\$CONFIG_${section}_TYPE"
		[ "$stype" = "$type" ] && "$fn" "$section"
	done
	return 0
}
config_list_foreach() {
	local section="$1" opt="$2" fn="$3" values value IFS='
'
	eval "values=\${CONFIG_${section}_${opt}:-}"
	for value in $values; do
		"$fn" "$value"
	done
}

procd_print() {
	echo "$1"
	shift
	for arg in "$@"; do
		echo "	$arg"
	done
}
procd_open_instance() { procd_print "open_instance" "$@"; }
procd_close_instance() { procd_print "close_instance"; }
procd_set_param() { procd_print "set_param" "$@"; }
procd_append_param() { procd_print "append_param" "$@"; }
procd_add_reload_trigger() { procd_print "add_reload_trigger" "$@"; }
procd_send_signal() { procd_print "send_signal" "$@"; }
