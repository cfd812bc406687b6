# kbuild's "run a command only if it changed" machinery, restated for the
# reference flow (SPEC §1). A target is rebuilt when a prerequisite is newer
# (or missing), or when its command differs from the one recorded in
# dir/.target.cmd as `savedcmd_<target> := ...`; after a successful run the
# command is recorded there. The recorded text has `$` doubled and `#` as
# $(pound), so that make reads it back unchanged when the .cmd is included.

squote := '
pound := \#
empty :=
space := $(empty) $(empty)
space-mark := @@SPACE@@

# For use inside shell single quotes: ' becomes '\''
shell-sq = $(subst $(squote),'\$(squote)',$1)

# The command text to record: $ -> $$, # -> $(pound), quoted for printf.
record-text = $(call shell-sq,$(subst $(pound),$$(pound),$(subst $$,$$$$,$(cmd_$1))))

dot-cmd = $(dir $@).$(notdir $@).cmd

# Non-empty when the command changed: both sides as one word each.
cmd-differs = $(filter-out $(subst $(space),$(space-mark),$(strip $(savedcmd_$@))),$(subst $(space),$(space-mark),$(strip $(cmd_$1))))

# Prerequisites newer than the target, phony ones excluded.
newer-prereqs = $(filter-out $(PHONY),$?)

ifeq ($(V),1)
show-cmd = echo '$(call shell-sq,$(cmd_$1))';
else
show-cmd = $(if $(quiet_cmd_$1),echo '  $(call shell-sq,$(quiet_cmd_$1))';)
endif

# Remove a half-written target when the command is interrupted.
trap-rm = trap 'rm -f $@' INT TERM HUP;

run-and-record = @set -e; $(show-cmd) $(trap-rm) $(cmd_$1); \
	printf '%s\n' 'savedcmd_$@ := $(record-text)' > $(dot-cmd)

if_changed = $(if $(newer-prereqs)$(cmd-differs),$(run-and-record),@:)
