# Sourced by the bench scripts that run the user's commands: `measure NAME CMD...` runs CMD under
# /usr/bin/time -v while sampling its RssAnon (/proc/PID/status, every 0.2 s), and appends one
# row to $rows: name, wall, user and system seconds, peak RSS GiB, peak anonymous GiB, minor
# faults in millions, status. Expects DIR (where the logs go); removes the paths in RM first.
measure() {
    local name=$1
    shift
    local log=$DIR/$name.time out=$DIR/$name.out anon=0 pid child a
    rm -rf "${RM[@]}"
    /usr/bin/time -v -o "$log" "$@" >"$out" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        child=$(pgrep -P "$pid" | head -1 || true)
        if [ -n "$child" ]; then
            a=$(awk '/^RssAnon/ {print $2}' "/proc/$child/status" 2>/dev/null || true)
            [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
        fi
        sleep 0.2
    done
    local rc=0
    wait "$pid" || rc=$?
    awk -v name="$name" -v anon="$anon" -v rc="$rc" -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); wall = 0; for (i = 1; i <= n; i++) wall = wall * 60 + p[i] }
        /User time/ { user = $2 } /System time/ { sys = $2 }
        /Maximum resident set size/ { rss = $2 }
        /Minor \(reclaiming a frame\) page faults/ { minor = $2 }
        END { printf "%s\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%s\n", name, wall, user, sys,
              rss / 1048576, anon / 1048576, minor / 1e6, (rc == 0 ? "ok" : "exit " rc) }' "$log" \
        | tee -a "$rows"
    [ "$rc" = 0 ] || tail -5 "$out" >&2
}
