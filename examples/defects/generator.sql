-- A steady stream of realistic camera defects: CALL defects_generate(per_second, seconds).
-- Mostly inserts; now and then an inspector re-scores a recent defect (it may leave the
-- dashboard's score filter, or enter it) or dismisses a false positive (a delete).
CREATE OR REPLACE PROCEDURE defects_generate(per_second real DEFAULT 5, seconds int DEFAULT 3600)
LANGUAGE plpgsql AS $$
DECLARE
    cameras text[] := ARRAY['press-1', 'press-2', 'weld-1', 'weld-2', 'paint-1', 'paint-2', 'qa-1', 'qa-2'];
    kinds   text[] := ARRAY['scratch', 'scratch', 'scratch', 'dent', 'dent', 'stain', 'crack', 'burr', 'misalignment'];
    until   timestamptz := clock_timestamp() + make_interval(secs => seconds);
    n       bigint := 0;
    victim  bigint;
BEGIN
    WHILE clock_timestamp() < until LOOP
        n := n + 1;
        -- Scores lean low (most findings are minor): the larger of two uniforms, squared.
        INSERT INTO defects (camera, kind, score, meta)
        VALUES (cameras[1 + floor(random() * array_length(cameras, 1))::int],
                kinds[1 + floor(random() * array_length(kinds, 1))::int],
                round(power(greatest(random(), random()), 2)::numeric, 4),
                jsonb_build_object('frame', n, 'x', floor(random() * 1920), 'y', floor(random() * 1080),
                                   'w', 4 + floor(random() * 60), 'h', 4 + floor(random() * 60)));
        IF n % 10 = 0 THEN
            SELECT id INTO victim FROM defects ORDER BY id DESC OFFSET floor(random() * 20)::int LIMIT 1;
            UPDATE defects SET score = round(random()::numeric, 4),
                               meta = meta || jsonb_build_object('rescored', true)
             WHERE id = victim;
        END IF;
        IF n % 25 = 0 THEN
            DELETE FROM defects
             WHERE id = (SELECT id FROM defects WHERE score < 0.2 ORDER BY id DESC LIMIT 1);
        END IF;
        COMMIT;
        PERFORM pg_sleep(1.0 / per_second);
    END LOOP;
END
$$;
